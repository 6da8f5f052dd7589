"""Running a broker process in the foreground: is the port free, forward our signals to it, its exit code.

Shared by `python -m broker` (broker/__main__.py) and the secure profile's commands (broker/secure_cli.py)."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind_problem(bind: str, port: int) -> str | None:
    """Return why `bind:port` cannot be listened on, or None if it is free."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((bind, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return f"port {port} on {bind} is already in use (another broker running?); pick one with --port"
        if error.errno == errno.EACCES:
            return f"permission denied to listen on port {port} (ports below 1024 need root)"
        return f"cannot listen on {bind}:{port}: {error.strerror or error}"
    return None


@contextmanager
def forwarding_signals(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Forward SIGINT/SIGTERM received by this process to `process` while inside."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code(returncode: int) -> int:
    """Map a child's return code (negative = killed by signal) to a shell exit code."""
    return 128 - returncode if returncode < 0 else returncode
