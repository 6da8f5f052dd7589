"""One selector loop driving many paho clients and timers in one thread: paho 2's external-loop interface
(socket open/close and want-write callbacks, loop_read, loop_write, loop_misc), so that a process holds thousands
of MQTT connections without a thread per connection."""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)
MISC_EVERY_S = 1.0   # keepalive pings and timeouts of every client (loop_misc)
MAX_WAIT_S = 0.25


class Timer:
    """A pending call; cancel() makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._clients: set[mqtt.Client] = set()
        self._next_misc = 0.0

    # ---- timers ------------------------------------------------------------------------------------------

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay_s), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    # ---- paho clients ------------------------------------------------------------------------------------

    def attach(self, client: mqtt.Client) -> None:
        """Let this loop drive `client`: its sockets are registered here as paho opens and closes them."""
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        self._clients.add(client)

    def detach(self, client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is not None:
            self._forget(sock)
        self._clients.discard(client)

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._forget(sock)

    def _forget(self, sock: Any) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._modify(sock, selectors.EVENT_READ, client)

    def _modify(self, sock: Any, events: int, client: mqtt.Client) -> None:
        try:
            self.selector.modify(sock, events, client)
        except (KeyError, ValueError):
            pass   # already closed

    # ---- the loop ----------------------------------------------------------------------------------------

    def run(self, done: Callable[[], bool]) -> None:
        """Serve sockets and timers until `done()` is true (checked after every pass)."""
        while not done():
            now = time.monotonic()
            wait = MAX_WAIT_S
            if self._timers:
                wait = min(wait, max(0.0, self._timers[0][0] - now))
            for key, mask in self.selector.select(wait) if self.selector.get_map() else _sleep(wait):
                client: mqtt.Client = key.data
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    try:
                        timer.callback()
                    except Exception:   # one device's bug must not stop the others
                        log.exception("simulated device timer failed")
            if now >= self._next_misc:
                self._next_misc = now + MISC_EVERY_S
                for client in list(self._clients):
                    if client.socket() is not None:
                        client.loop_misc()

    def close(self) -> None:
        self.selector.close()


def _sleep(wait: float) -> list[tuple[Any, int]]:
    time.sleep(wait)
    return []
