"""`python -m demo` as a real process: its help is whole, and a busy port for the dashboard is a clear error naming
the port and the flag that moves it, before anything starts."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import free_port
from demo.local_federation import REPO_ROOT

pytestmark = pytest.mark.timeout(120)


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "demo", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin:/usr/sbin"})


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_help_is_whole(tmp_path: Path) -> None:
    out = demo("--help", cwd=tmp_path)
    assert out.returncode == 0
    description = " ".join(out.stdout.split("options:")[0].split("\n\n", 1)[1].split())
    assert description.endswith("and exporting a TFLite model."), description


def test_a_busy_websockets_port_names_the_port_and_the_flag(tmp_path: Path, busy_port: int) -> None:
    out = demo("--dashboard", str(free_port()), "--ws-port", str(busy_port), "--workdir", str(tmp_path / "w"),
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"port {busy_port}" in out.stderr and "is in use" in out.stderr and "--ws-port" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w" / "logs").exists(), "nothing was started"


def test_a_busy_dashboard_port_names_the_port_and_the_flag(tmp_path: Path, busy_port: int) -> None:
    out = demo("--dashboard", str(busy_port), "--ws-port", str(free_port()), "--workdir", str(tmp_path / "w"),
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"port {busy_port}" in out.stderr and "is in use" in out.stderr and "--dashboard PORT" in out.stderr
    assert "Traceback" not in out.stderr
