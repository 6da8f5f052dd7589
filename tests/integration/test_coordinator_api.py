"""The coordinator's Python API: a run started from Python (run_coordinator with settings built in code) against a
Mosquitto started from Python (broker.MosquittoProcess), with two real edge-client processes training on
Fashion-MNIST; the RunResult it returns agrees with the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import MosquittoProcess
from coordinator import ConfigError, RunResult, run_coordinator, settings_from_dict
from demo.local_federation import LocalFederation

pytestmark = pytest.mark.timeout(300)


def test_a_run_started_from_python_returns_its_result(tmp_path: Path) -> None:
    with MosquittoProcess(workdir=tmp_path / "mosquitto") as broker:
        devices = LocalFederation(tmp_path / "devices", run_name="py", port=broker.port)
        try:
            for k in (1, 2):
                devices.start_client(f"dev-{k}", ["--dataset", "fashion_mnist", "--partition", f"{k}/2",
                                                  "--max-examples", "2000"])
            settings = settings_from_dict({
                "run": {"name": "py", "output_dir": tmp_path / "runs"},
                "broker": {"host": "127.0.0.1", "port": broker.port},
                "training": {"rounds": 2}, "quorum": {"min_clients": 2, "round_deadline_s": 120},
                "evaluation": {"max_examples": 500}, "export": {"tflite": ["float32"]},
            })
            result = run_coordinator(settings)
            codes = devices.wait_all(120)
        finally:
            devices.stop()
    assert isinstance(result, RunResult)
    assert (result.reason, result.rounds_completed, result.run_dir) == ("completed", 2, tmp_path / "runs" / "py")
    assert codes == {"dev-1": 0, "dev-2": 0}, codes
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["clients"] == 2 for r in rows)
    assert result.keras_accuracy == pytest.approx(rows[-1]["test_accuracy"]) and result.keras_accuracy > 0.5
    assert result.keras_mae is None and result.keras_rmse is None, "a classification has no regression errors"
    assert result.tflite["float32"]["within_bound"] and (result.run_dir / "model.tflite").is_file()
    assert result.deployed is not None and result.deployed["confirmed"]


def test_bad_settings_from_python_fail_before_any_broker_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[quorum\] min_clients = 0 is out of range"):
        run_coordinator({"quorum": {"min_clients": 0}})
    with pytest.raises(ConfigError, match=r"unknown key 'rounds'"):
        run_coordinator(None, overrides={"run.rounds": 3})
