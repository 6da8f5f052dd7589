"""The coordinator's log at a fleet's rate: a line per birth, update or staleness weighting while the federation is
small, and beyond that DEBUG lines with one INFO summary a few times a second ("round 3: 412/1000 updates, 37/s")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DETAIL_UP_TO = 20       # with at most this many clients every event gets its own INFO line, as it always had
SUMMARY_EVERY_S = 0.5   # beyond it: one summary line at most this often while events arrive


@dataclass
class IngestLog:
    """Counts births, departures and updates; says at which level a per-event line goes (`level`), and logs one
    summary when `SUMMARY_EVERY_S` passed since the last (`maybe_summary`, O(1): call it after every event)."""

    log: logging.Logger
    detail_up_to: int = DETAIL_UP_TO
    every_s: float = SUMMARY_EVERY_S
    clock: Callable[[], float] = time.monotonic
    births: int = 0
    departures: int = 0
    updates: int = 0
    _last_at: float = field(default=0.0, init=False)
    _said: tuple[int, int, int] = field(default=(0, 0, 0), init=False)   # births, departures, updates at the last

    def __post_init__(self) -> None:
        self._last_at = self.clock()

    def level(self, population: int) -> int:
        """INFO for a per-event line while `population` (clients online, or a round's target) is small."""
        return logging.INFO if population <= self.detail_up_to else logging.DEBUG

    def maybe_summary(self, online: int, round_: int | None, received: int, target: int, refused: int) -> None:
        """At most every `every_s`, when something happened since the last summary and the federation is past
        `detail_up_to`: one INFO line with the counts and the update rate."""
        now = self.clock()
        if now - self._last_at < self.every_s:
            return
        counts = (self.births, self.departures, self.updates)
        births, departures, updates = (a - b for a, b in zip(counts, self._said))
        elapsed = now - self._last_at
        self._last_at, self._said = now, counts
        if not (births or departures or updates) or max(online, target) <= self.detail_up_to:
            return
        parts = []
        if round_ is not None and updates:
            parts.append(f"round {round_}: {received}/{target} updates, {updates / elapsed:.0f}/s, {refused} refused")
        if births or departures:
            parts.append(f"clients: {online} online (+{births} came, {departures} left)")
        self.log.info("; ".join(parts) if parts else f"{online} clients online")
