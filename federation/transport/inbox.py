"""A bounded inbox: MQTT messages queued by paho's network thread and handled, in order, on one thread.

Admission runs on the network thread before anything is queued; the queue's messages and bytes are capped, and a
full inbox makes the network thread wait (backpressure through MQTT flow control) instead of dropping."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Inbound:
    """One received MQTT message."""

    topic: str
    payload: bytes
    retained: bool


class Inbox:
    """A FIFO of Inbound messages holding at most `max_messages` messages and `max_bytes` of payload (a single
    larger message still fits when the inbox is empty, so nothing is ever too large to queue)."""

    def __init__(self, max_bytes: int, max_messages: int = 0) -> None:
        if max_bytes < 1 or max_messages < 0:
            raise ValueError(f"an inbox holds at least 1 byte and 0 or more messages (0: no count limit), got "
                             f"{max_bytes} bytes and {max_messages} messages")
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._items: deque[Inbound] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.peak_bytes = 0
        self.peak_messages = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Inbound, timeout: float | None = None) -> bool:
        """Queue `item`, waiting while the inbox is full; False if still full after `timeout`."""
        size = len(item.payload)
        with self._cond:
            if not self._cond.wait_for(lambda: self._room_for(size), timeout):
                return False
            self._items.append(item)
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self.peak_messages = max(self.peak_messages, len(self._items))
            self._cond.notify_all()
            return True

    def _room_for(self, size: int) -> bool:
        if not self._items:
            return True
        return self._bytes + size <= self.max_bytes and (not self.max_messages or len(self._items) < self.max_messages)

    def get(self, timeout: float) -> Inbound | None:
        """The oldest message, or None if none came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            self._bytes -= len(item.payload)
            self._cond.notify_all()
            return item
