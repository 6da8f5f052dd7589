"""Two edge clients with one client id: the second is told the id is online in another process (host, pid) and
exits 5, instead of the two knocking each other off the broker every second. A killed holder frees the id at once
(its last will). Real Mosquitto, real `python -m edge_client` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.local_federation import REPO_ROOT
from federation.protocol.messages import ClientStatus, decode_message
from tests.support import retained_messages

pytestmark = pytest.mark.timeout(300)

KEEPALIVE_S = 5
STATUS = "fedmq/ids/client/twin/status"


def start_client(tmp_path: Path, port: int, name: str, client_id: str = "twin") -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "client.toml"
    config.write_text(f"[broker]\nkeepalive_s = {KEEPALIVE_S}\n")
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edge_client", "--config", str(config), "--broker",
                                 f"mqtt://127.0.0.1:{port}", "--run", "ids", "--client-id", client_id, "--dataset",
                                 "fashion_mnist", "--max-examples", "64"],
                                cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log_path


def online_status(port: int) -> ClientStatus | None:
    payload = retained_messages(port, STATUS, wait_s=0.3).get(STATUS, b"")
    status = decode_message(payload, 1 << 20) if payload else None
    return status if isinstance(status, ClientStatus) and status.status == "online" else None


def wait_online_as(port: int, pid: int, timeout: float = 90) -> ClientStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = online_status(port)
        if status is not None and status.device.get("pid") == pid:
            return status
        time.sleep(0.3)
    raise AssertionError(f"no online status of pid {pid}; last: {online_status(port)}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(20)


def test_a_second_process_with_the_same_id_exits_5_and_the_first_keeps_running(mosquitto, tmp_path: Path) -> None:
    first, first_log = start_client(tmp_path, mosquitto.port, "first")
    second = third = None
    try:
        held = wait_online_as(mosquitto.port, first.pid)
        assert held.device.get("instance"), "a per-process token in the status's device map"
        second, second_log = start_client(tmp_path, mosquitto.port, "second")
        code = second.wait(120)
        text = second_log.read_text()
        assert code == 5, text[-3000:]
        assert "client id 'twin' is already online in another process" in text
        assert f"pid {first.pid}" in text and "host " in text and "--client-id" in text
        assert "waiting up to 8 s" in text, "it gave a powered-off device 1.5 x keepalive to drop out"
        assert first.poll() is None, first_log.read_text()[-3000:]
        assert "disconnected" not in first_log.read_text(), "the first was never knocked off"
        assert online_status(mosquitto.port).device.get("pid") == first.pid

        # A killed holder's last will frees the id at once: a new process takes it without waiting.
        stop(first)
        third, third_log = start_client(tmp_path, mosquitto.port, "third")
        wait_online_as(mosquitto.port, third.pid)
        assert "is online already" not in third_log.read_text()
        assert third.poll() is None
    finally:
        for proc in (first, second, third):
            if proc is not None:
                stop(proc)


def test_default_client_ids_differ_per_process() -> None:
    ids = [subprocess.run([sys.executable, "-c", "from edge_client.__main__ import build_parser; "
                           "print(build_parser().get_default('client_id'))"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60).stdout.strip() for _ in range(2)]
    assert ids[0] != ids[1] and all(ids)
