"""The open-files limit a broker process starts with: Mosquitto holds one file descriptor per connected client.

Every launcher in broker/ (MosquittoProcess, `python -m broker`, the secure profile) starts Mosquitto with its soft
RLIMIT_NOFILE raised to the hard limit (Mosquitto 2.0 does not raise it itself), and logs what the broker can hold."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable

log = logging.getLogger(__name__)

UNLIMITED_CAP = 1 << 20
"""The soft limit asked for when the hard limit is unlimited (Linux refuses more than fs.nr_open, 1,048,576)."""

SPARE_FDS = 32
"""Descriptors Mosquitto needs besides its clients: listeners, its log, its epoll set, the persistence file."""

FEW_CLIENTS = 4096
"""Below this many possible clients the launcher warns: a fleet would hit the limit."""


def broker_open_files(soft: int, hard: int) -> int:
    """The soft limit to start the broker with: the hard limit (never lower than `soft`; capped when unlimited)."""
    ceiling = UNLIMITED_CAP if hard == resource.RLIM_INFINITY or hard < 0 else hard
    return max(soft, ceiling) if soft != resource.RLIM_INFINITY else soft


def max_clients(open_files: int) -> int:
    """About how many clients a broker with `open_files` descriptors can hold (one each, and a few spare)."""
    return max(0, open_files - SPARE_FDS)


def raising_open_files(name: str = "mosquitto") -> Callable[[], None]:
    """A Popen preexec_fn that gives the child the raised limit; logs (here, in the parent) what it can hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = broker_open_files(soft, hard)
    clients = max_clients(target)
    if target > soft:
        log.info("%s: open files limit raised from %d to %d (the hard limit): about %d clients (one descriptor "
                 "each)", name, soft, target, clients)
    if clients < FEW_CLIENTS:
        log.warning("%s can hold only about %d clients: the open files limit is %d (hard limit %d). For a fleet "
                    "raise it: `ulimit -Hn 65536` as root, LimitNOFILE=65536 in a systemd unit, or nofile in "
                    "/etc/security/limits.conf (README \"Running a fleet\")", name, clients, target, hard)

    def apply() -> None:  # runs in the child between fork and exec: no logging here
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

    return apply
