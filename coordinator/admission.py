"""The cheapest checks on an incoming update, on paho's network thread before it is queued or decoded: its
size against the model's, and a per-device budget of messages and bytes per round, so one device's flood
can't crowd out another device's update."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Admission:
    """Per-device budget for one round. `admit` returns None to queue a message, or the reason to drop it."""

    max_message_bytes: int          # no single update (or chunk of one) is larger than this
    max_messages: int               # per device and round: an update, its chunks, and a few re-sends
    max_bytes: int                  # per device and round
    _messages: Counter[str] = field(default_factory=Counter)
    _bytes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dropped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def new_round(self) -> None:
        with self._lock:
            self._messages.clear()
            self._bytes.clear()

    def admit(self, sender: str, size: int) -> str | None:
        with self._lock:
            reason = None
            if size > self.max_message_bytes:
                reason = "too_large"
            elif self._messages[sender] >= self.max_messages or self._bytes[sender] + size > self.max_bytes:
                reason = "flood"
            if reason:
                if len(self._dropped) < 100_000 or (sender, reason) in self._dropped:
                    self._dropped[(sender, reason)] += 1
                return reason
            self._messages[sender] += 1
            self._bytes[sender] += size
        return None

    def take_dropped(self) -> Counter[tuple[str, str]]:
        """Drops since the last call, by (sender, reason), for the coordinator's counts and log."""
        with self._lock:
            dropped, self._dropped = self._dropped, Counter()
        return dropped
