"""A TCP proxy that a test can cut and restore: a device's network going away and coming back, with the broker and
everyone else still connected. Threads and sockets only; used by integration tests."""

from __future__ import annotations

import socket
import threading

from broker.ports import free_port


class CuttableLink:
    """Listens on `port` and forwards each connection to 127.0.0.1:`target`. cut() drops every connection and
    refuses new ones (closed as soon as accepted) until restore()."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                device, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                device.close()
                continue
            try:
                broker = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                device.close()
                continue
            broker.settimeout(None)
            with self._lock:
                self._open += [device, broker]
            threading.Thread(target=self._pipe, args=(device, broker), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, device), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass
