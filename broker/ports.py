"""Free TCP ports for brokers started on this machine, chosen below the kernel's ephemeral range.

An outgoing connection takes its local port from the ephemeral range; a port chosen there can be taken while its
broker restarts (a device that dials the stopped broker's port can even connect to itself), and the broker then
can't listen on it again. Ports below that range are only ever taken by a listener, which the check here sees."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)   # Linux's default; other systems: the kernel's choice (bind to port 0)
LOWEST = 10000                       # below: well-known and registered services
TRIES = 200


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default where it can't be read)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def free_ports(count: int, host: str = "127.0.0.1", path: Path = EPHEMERAL_RANGE_FILE) -> list[int]:
    """`count` distinct TCP ports on `host` that nothing is bound to now (each held while choosing the rest), below
    the ephemeral range when it leaves room there, else the kernel's choice."""
    low = ephemeral_range(path)[0]
    sockets: list[socket.socket] = []
    candidates = random.sample(range(LOWEST, low), min(TRIES, low - LOWEST)) if low - LOWEST >= 10 * count else []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        while len(sockets) < count:   # no room below the ephemeral range, or all tried were taken
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing is bound to now, below the ephemeral range (see free_ports)."""
    return free_ports(1, host)[0]
