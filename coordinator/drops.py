"""Every dropped message counted by reason, as errors (`rejected`) or as honest leftovers (`ignored`: late or
repeated work), with bounded logging: the first drop of a kind per device in full, then one summary line."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

log = logging.getLogger("coordinator.drops")

# Honest work that arrives too late or twice: QoS 1 redelivery, re-sends after a restart, a round that closed.
IGNORED_REASONS = frozenset({"late", "duplicate", "lost_with_relay"})
DETAIL_CHARS = 200
_MAX_SENDERS_KEPT = 1000          # senders remembered per window for the summary line


class DropLog:
    """Counts drops for the round's metrics and logs them at a bounded rate.

    In each `interval_s` window, at most `max_lines` drops are logged one by one (the first of each device
    and reason); the rest are summed into one summary line per window, so a flood of any size costs a few
    lines of log."""

    def __init__(self, interval_s: float = 5.0, max_lines: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_lines = max_lines
        self._clock = clock
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self._window_start = clock()
        self._logged: set[tuple[str, str]] = set()
        self._unlogged: Counter[str] = Counter()         # reason -> drops not logged one by one this window
        self._unlogged_senders: set[str] = set()
        self._senders_capped = False

    def record(self, sender: str, reason: str, detail: str, count: int = 1) -> None:
        (self.ignored if reason in IGNORED_REASONS else self.rejected)[reason] += count
        self.flush()
        key = (sender, reason)
        if key in self._logged or len(self._logged) >= self.max_lines:
            self._unlogged[reason] += count
            if len(self._unlogged_senders) < _MAX_SENDERS_KEPT:
                self._unlogged_senders.add(sender)
            elif sender not in self._unlogged_senders:
                self._senders_capped = True
            return
        self._logged.add(key)
        if count > 1:
            self._unlogged[reason] += count - 1
        text = detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS] + "..."
        if reason in IGNORED_REASONS:
            log.info("ignored a message from %s (%s): %s", _clip(sender), reason, text)
        else:
            log.warning("rejected a message from %s (%s): %s", _clip(sender), reason, text)

    def flush(self, force: bool = False) -> None:
        """Log the window's summary when it is over (or now, with `force`), and start a new window."""
        now = self._clock()
        if not force and now - self._window_start < self.interval_s:
            return
        if self._unlogged:
            senders = sorted(self._unlogged_senders)
            more = f" and {'at least ' if self._senders_capped else ''}{len(senders) - 5} more" \
                if len(senders) > 5 else ""
            shown = ", ".join(_clip(s) for s in senders[:5]) + more
            reasons = ", ".join(f"{n} {r}" for r, n in self._unlogged.most_common())
            log.warning("dropped %d more messages in the last %.0f s (%s) from %s", sum(self._unlogged.values()),
                        now - self._window_start, reasons, shown)
        self._window_start = now
        self._logged.clear()
        self._unlogged.clear()
        self._unlogged_senders.clear()
        self._senders_capped = False

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """(rejected, ignored) counted since the last call: what a closing round reports."""
        rejected, ignored = dict(self.rejected), dict(self.ignored)
        self.rejected.clear()
        self.ignored.clear()
        return rejected, ignored


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
