"""`python -m coordinator baseline` on a small Fashion-MNIST subset as a real process, then
`python -m coordinator report` comparing a federated metrics file with it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.metrics import RoundMetrics, append_metrics, read_metrics
from demo.local_federation import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

ROUNDS, EPOCHS, EXAMPLES, EVAL, BATCH = 2, 2, 600, 300, 32


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240)


def test_baseline_on_a_subset_writes_the_metrics_format_and_the_report_compares(tmp_path: Path) -> None:
    out = run("baseline", "--config", str(REPO_ROOT / "config" / "default.toml"), "--run.output_dir", str(tmp_path),
              "--run.name", "small", "--training.rounds", str(ROUNDS), "--training.local_epochs", str(EPOCHS),
              "--training.batch_size", str(BATCH), "--max-examples", str(EXAMPLES),
              "--evaluation.max_examples", str(EVAL))
    assert out.returncode == 0, out.stderr
    base = tmp_path / "small-centralized"
    rows = read_metrics(base / "metrics.jsonl")
    assert [r.round for r in rows] == list(range(1, ROUNDS + 1)), "one row per round-equivalent"
    for r in rows:
        assert (r.clients, r.examples, r.bytes_in, r.bytes_out) == (1, EXAMPLES, 0, 0)
        assert r.client_ids == ["centralized"] and r.rejected == {} and r.aggregate_s == 0
        assert r.round_time_s >= r.slowest_train_s > 0 and r.evaluate_s > 0
        assert r.overhead_s == pytest.approx(r.round_time_s - r.slowest_train_s, abs=2e-4)
        assert 0 <= r.test_accuracy <= 1 and math.isfinite(r.test_loss)
    assert rows[-1].test_accuracy > 0.3, "well above the 0.1 of chance after 4 epochs on 600 images"
    assert rows[-1].test_loss < rows[0].test_loss * 1.05
    assert f"test accuracy {rows[-1].test_accuracy:.4f}" in out.stdout
    assert sum("round-equivalent" in line for line in out.stderr.splitlines()) == ROUNDS

    summary = json.loads((base / "summary.json").read_text())
    assert summary["total_epochs"] == ROUNDS * EPOCHS and summary["train_examples"] == EXAMPLES
    assert summary["examples_evaluated"] == EVAL and summary["keras"]["accuracy"] == rows[-1].test_accuracy
    config = json.loads((base / "config.json").read_text())
    assert config["training"]["local_epochs"] == EPOCHS and config["baseline"]["total_epochs"] == ROUNDS * EPOCHS

    # R x E epochs were trained: the saved optimizer took exactly that many epochs of steps.
    import keras

    model = keras.models.load_model(base / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == ROUNDS * EPOCHS * math.ceil(EXAMPLES / BATCH)

    # A federated run of the same shape, against the baseline: the report's centralized columns are its numbers.
    fed = tmp_path / "small"
    fed.mkdir()
    for r in range(1, ROUNDS + 1):
        append_metrics(fed / "metrics.jsonl", RoundMetrics(
            round=r, clients=2, examples=EXAMPLES, test_loss=1.5 / r, test_accuracy=0.3 * r, bytes_in=1_801_612,
            bytes_out=900_866, round_time_s=3.0, slowest_train_s=2.5, overhead_s=0.5, aggregate_s=0.01,
            evaluate_s=0.2, client_ids=["a", "b"]))
    (fed / "config.json").write_text(json.dumps({"training": {"local_epochs": EPOCHS}}))
    out = run("report", str(fed), str(base))
    assert out.returncode == 0, out.stderr
    report = fed / "report"
    for name in ("accuracy_loss", "bytes", "round_time", "clients"):
        assert (report / f"{name}.png").stat().st_size > 5000
    lines = (report / "report.md").read_text().splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| round |")))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    for line, row in zip(lines[header + 2:header + 2 + ROUNDS], rows):
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["centralized accuracy"] == f"{row.test_accuracy:.4f}"
        assert cells["centralized loss"] == f"{row.test_loss:.4f}"
