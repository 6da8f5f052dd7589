"""Free ports for local brokers (broker/ports.py): below the kernel's ephemeral range where it leaves room, distinct,
and the kernel's choice where it does not."""

from __future__ import annotations

import socket
from pathlib import Path

from broker.ports import DEFAULT_EPHEMERAL, LOWEST, ephemeral_range, free_ports


def test_the_range_is_read_from_the_kernel_file_or_linuxs_default(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL
    (tmp_path / "bad").write_text("many\n")
    assert ephemeral_range(tmp_path / "bad") == DEFAULT_EPHEMERAL


def test_ports_are_distinct_free_and_below_the_range(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("30000 60999\n")
    ports = free_ports(12, path=tmp_path / "range")
    assert len(set(ports)) == 12 and all(LOWEST <= p < 30000 for p in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_range_that_leaves_no_room_gets_the_kernels_choice(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("1024 65535\n")
    ports = free_ports(3, path=tmp_path / "range")
    assert len(set(ports)) == 3 and all(1024 <= p <= 65535 for p in ports)
