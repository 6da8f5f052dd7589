"""A run never starts by accident: bare `python -m coordinator` and a misspelled flag only print usage, and a
finished run folder is set aside only when the new run's first round starts, not while the coordinator waits for
the broker or for clients. Real processes, a real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker import MosquittoProcess, free_port
from coordinator.checkpoint import CHECKPOINT_FILE, Checkpoint, save_checkpoint
from coordinator.metrics import RoundMetrics
from demo.local_federation import REPO_ROOT
from federation.protocol.messages import CoordinatorState, decode_message
from tests.support import retained_messages
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("argv", [[], ["--training.round", "3"], ["run", "--training.round", "3"]],
                         ids=["bare", "prefix-of-a-flag", "run-with-prefix-of-a-flag"])
def test_no_run_starts_without_being_asked(tmp_path: Path, argv: list[str]) -> None:
    """Today's defaults would connect to localhost:1883 and write runs/demo under the working directory."""
    out = subprocess.run([sys.executable, "-m", "coordinator", *argv, "--broker.port", str(free_port())]
                         if argv else [sys.executable, "-m", "coordinator"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=40)
    assert out.returncode == 2, out.stderr[-2000:]
    assert not (tmp_path / "runs").exists(), "nothing was written"
    if not argv:
        assert "python -m coordinator run" in out.stderr and "--config" in out.stderr
    else:
        assert "--training.round" in out.stderr and "unrecognized arguments" in out.stderr


def _metrics(r: int) -> RoundMetrics:
    return RoundMetrics(round=r, clients=1, examples=10, test_loss=1.0, test_accuracy=0.5, bytes_in=1, bytes_out=1,
                        round_time_s=1.0, slowest_train_s=0.5, overhead_s=0.5, aggregate_s=0.0, evaluate_s=0.0,
                        client_ids=["a"], rejected={})


def test_a_finished_run_is_kept_in_place_until_the_new_run_really_starts(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir, Checkpoint(2, [], [_metrics(1), _metrics(2)], "a" * 64, finished=True))
    (run_dir / "metrics.jsonl").write_text("earlier results\n")
    port = free_port()
    log_path = tmp_path / "coordinator.log"
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "run", "--config", str(REPO_ROOT / "config" / "default.toml"),
             "--run.output_dir", str(tmp_path / "runs"), "--run.name", "r1", "--broker.host", "127.0.0.1",
             "--broker.port", str(port), "--quorum.min_clients", "1", "--evaluation.max_examples", "100"],
            cwd=tmp_path, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1. No broker: the coordinator retries, and the finished run stays where it is.
        wait_for("the coordinator to say why it can't connect", lambda: f"nothing listens on 127.0.0.1:{port}: is the broker running?" in log_path.read_text())
        time.sleep(1.0)
        assert proc.poll() is None, log_path.read_text()
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r1"], log_path.read_text()
        assert (run_dir / "metrics.jsonl").read_text() == "earlier results\n"
        # 2. The broker comes up: connected, waiting for clients; still nothing is moved or overwritten.
        with MosquittoProcess(port=port, workdir=tmp_path / "mosquitto") as broker:
            def waiting() -> bool:
                state = retained_messages(broker.port, "fedmq/r1/coordinator/state", wait_s=0.3)
                payload = next(iter(state.values()), b"")
                return bool(payload) and decode_message(payload, 1 << 20).phase == "waiting_for_clients"

            wait_for("the coordinator to wait for clients", waiting)
            assert isinstance(decode_message(next(iter(retained_messages(
                broker.port, "fedmq/r1/coordinator/state", wait_s=0.3).values())), 1 << 20), CoordinatorState)
            assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r1"], log_path.read_text()
            assert (run_dir / CHECKPOINT_FILE).is_file()
            assert (run_dir / "metrics.jsonl").read_text() == "earlier results\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
