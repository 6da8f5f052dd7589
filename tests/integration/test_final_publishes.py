"""The coordinator's last publishes (deployed model, run_end, cleared model, offline state) against a real Mosquitto
that goes away right after the last round: re-published after a reconnect, or a non-zero exit naming them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from demo.local_federation import LocalFederation
from federation.protocol.messages import RunEnd, decode_message
from tests.support import retained_messages

pytestmark = pytest.mark.timeout(300)

DATA = ["--dataset", "fashion_mnist", "--max-examples", "400"]
OVERRIDES = {"training.rounds": 1, "quorum.min_clients": 2, "quorum.round_deadline_s": 120,
             "evaluation.max_examples": 200, "export.tflite": ["float32"]}


def _federation(tmp_path: Path, confirm_s: float) -> LocalFederation:
    env = {**os.environ, "FEDMQ_FINAL_PUBLISH_TIMEOUT_S": str(confirm_s)}
    fed = LocalFederation(tmp_path / "fed", run_name="fin", env=env)
    fed.start_broker()
    fed.start_coordinator(OVERRIDES)
    for k in (1, 2):
        fed.start_client(f"fin-{k}", [*DATA, "--partition", f"{k}/2"])
    return fed


def _stop_broker_after_the_last_round(fed: LocalFederation) -> None:
    """Stop Mosquitto as soon as the last round's metrics are written: before the export and the final publishes."""
    metrics = fed.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert fed.procs["coordinator"].popen.poll() is None, fed.procs["coordinator"].log_tail()
        assert time.monotonic() < deadline, "round 1 did not close"
        time.sleep(0.05)
    assert fed.broker is not None
    fed.broker.stop()


def test_coordinator_does_not_claim_completion_when_its_final_publishes_are_lost(tmp_path: Path) -> None:
    fed = _federation(tmp_path, confirm_s=4)
    try:
        _stop_broker_after_the_last_round(fed)
        code = fed.wait("coordinator", 120)
    finally:
        fed.stop()
    log = fed.procs["coordinator"].log_path.read_text()
    assert code != 0, f"the coordinator exited 0 although nothing reached the broker:\n{log[-3000:]}"
    assert "not confirmed by the broker" in log, log[-3000:]
    for topic in ("fedmq/fin/end", "fedmq/fin/model/deploy", "fedmq/fin/coordinator/state", "fedmq/fin/model/global"):
        assert topic in log.split("not confirmed by the broker", 1)[1], f"{topic} not named:\n{log[-3000:]}"
    assert fed.summary()["reason"] == "completed", "the training itself did complete (summary.json says so)"


def test_final_publishes_are_sent_again_after_the_broker_comes_back(tmp_path: Path) -> None:
    fed = _federation(tmp_path, confirm_s=90)
    try:
        _stop_broker_after_the_last_round(fed)
        time.sleep(3)
        assert fed.broker is not None
        fed.broker.start()  # same port, empty: every retained message is gone
        code = fed.wait("coordinator", 150)
        retained = retained_messages(fed.port, "fedmq/fin/#")
    finally:
        fed.stop()
    log = fed.procs["coordinator"].log_path.read_text()
    assert code == 0, log[-3000:]
    assert "fedmq/fin/end" in retained and "fedmq/fin/model/deploy" in retained, sorted(retained)
    end = decode_message(retained["fedmq/fin/end"])
    assert isinstance(end, RunEnd) and end.reason == "completed"
    assert b"offline" in retained["fedmq/fin/coordinator/state"]
    assert "fedmq/fin/model/global" not in retained, "the cleared global model is not retained"
