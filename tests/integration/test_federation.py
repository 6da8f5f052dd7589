"""End to end: real Mosquitto, a real coordinator and three real edge-client processes training on
Fashion-MNIST for two rounds, then the exported TFLite model checked with LiteRT."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from demo.local_federation import REPO_ROOT, LocalFederation
from federation.protocol.codec import unpack
from federation.learning.datasets import load_dataset
from federation.inference.runtime import TFLiteClassifier
from tests.support import retained_messages
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)

CLIENTS = 3
EXAMPLES_PER_CLIENT = 1000
EVAL_EXAMPLES = 1000


def test_three_clients_two_rounds_export_tflite(federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({
        "training.rounds": 2, "quorum.min_clients": CLIENTS, "quorum.round_deadline_s": 120,
        "evaluation.max_examples": EVAL_EXAMPLES, "export.tflite": ["float32", "int8"],
    })
    for k in range(1, CLIENTS + 1):
        fed.start_client(f"dev-{k}", ["--dataset", "fashion_mnist", "--partition", f"{k}/{CLIENTS}",
                                      "--max-examples", str(CLIENTS * EXAMPLES_PER_CLIENT)])
    codes = fed.wait_all(240)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0, "dev-3": 0}, codes

    # The metrics file: one row per round, every client counted once, bytes and times recorded.
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["clients"] == CLIENTS
        assert r["client_ids"] == ["dev-1", "dev-2", "dev-3"]
        assert r["examples"] == CLIENTS * EXAMPLES_PER_CLIENT
        assert r["bytes_in"] > CLIENTS * 800_000 and r["bytes_out"] > 800_000
        assert r["round_time_s"] >= r["slowest_train_s"] > 0
        assert r["rejected"] == {}
    assert rows[-1]["test_accuracy"] > 0.5, "well above the 0.1 of chance"
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] * 1.05

    # Artifacts: per-round models, the final .keras, TFLite files, and a summary that agrees with them.
    run_dir = fed.run_dir
    assert (run_dir / "models" / "round_001.keras").is_file() and (run_dir / "models" / "round_002.keras").is_file()
    summary = fed.summary()
    assert summary["keras"]["accuracy"] == pytest.approx(rows[-1]["test_accuracy"])
    assert abs(summary["tflite"]["float32"]["delta_points"]) <= 0.1
    assert summary["tflite"]["int8"]["bytes"] < 0.3 * summary["tflite"]["float32"]["bytes"]
    # The class names: labels.txt beside the .keras and .tflite files, and inside each .tflite.
    from coordinator.export import read_labels

    labels = "".join(f"{name}\n" for name in summary["class_names"])
    assert len(summary["class_names"]) == 10 and (run_dir / "labels.txt").read_text() == labels
    assert (run_dir / "models" / "labels.txt").read_text() == labels
    for name in ("model.tflite", "model_int8.tflite"):
        assert read_labels((run_dir / name).read_bytes()) == tuple(summary["class_names"]), name

    # LiteRT runs the float32 model and agrees with Keras on real test images.
    data = load_dataset("fashion_mnist")
    x, y = data.x_test[:EVAL_EXAMPLES], data.y_test[:EVAL_EXAMPLES]
    classifier = TFLiteClassifier(run_dir / "model.tflite")
    assert classifier.runtime == "ai-edge-litert"
    tflite_probs = classifier.predict(x)
    import keras

    keras_probs = keras.models.load_model(run_dir / "model.keras", compile=False).predict(x, verbose=0)
    assert np.abs(tflite_probs - keras_probs).max() < 1e-4
    assert (tflite_probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.999
    assert (tflite_probs.argmax(1) == y).mean() == pytest.approx(summary["tflite"]["float32"]["accuracy"])

    # What the broker keeps: the run's end, the coordinator offline and done, every client offline.
    retained = retained_messages(fed.port, "fedmq/it/#")
    end = unpack(retained["fedmq/it/end"])
    assert end["type"] == "run_end" and end["reason"] == "completed" and end["round"] == 2
    state = unpack(retained["fedmq/it/coordinator/state"])
    assert state["status"] == "offline" and state["phase"] == "done"
    for k in range(1, CLIENTS + 1):
        assert unpack(retained[f"fedmq/it/client/dev-{k}/status"])["status"] == "offline"
    assert "fedmq/it/model/global" not in retained, "the finished run's model is no longer offered"

    # `python -m coordinator evaluate` gives the same accuracy for the .tflite file.
    out = subprocess.run([sys.executable, "-m", "coordinator", "evaluate", str(run_dir / "model.tflite"),
                          "--max-examples", str(EVAL_EXAMPLES)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"test accuracy {summary['tflite']['float32']['accuracy']:.4f}" in out.stdout
    out = subprocess.run([sys.executable, "-m", "coordinator", "evaluate", str(run_dir / "model.keras"),
                          "--max-examples", str(EVAL_EXAMPLES)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"test accuracy {summary['keras']['accuracy']:.4f}" in out.stdout


def test_clients_before_coordinator_and_a_late_joiner(federation: LocalFederation) -> None:
    """Clients started before the coordinator wait for it; one started after round 1 joins later rounds."""
    fed = federation
    client_args = ["--dataset", "fashion_mnist", "--max-examples", "7500"]  # rounds long enough to join
    fed.start_client("early-1", [*client_args, "--partition", "1/3"])
    fed.start_client("early-2", [*client_args, "--partition", "2/3"])
    fed.start_coordinator({"training.rounds": 6, "quorum.min_clients": 2, "quorum.round_deadline_s": 120,
                           "evaluation.max_examples": 500})
    wait_for("the first round's metrics", lambda: (fed.run_dir / "metrics.jsonl").is_file() and len(fed.metrics()) >= 1, 180)
    fed.start_client("late-3", [*client_args, "--partition", "3/3"])
    codes = fed.wait_all(240)
    assert codes == {"early-1": 0, "early-2": 0, "coordinator": 0, "late-3": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["client_ids"] == ["early-1", "early-2"]
    joined = [r["round"] for r in rows if "late-3" in r["client_ids"]]
    assert joined and joined == list(range(joined[0], 7)), "once in, the late client takes part in every later round"
    # It joins with the first round whose cohort is drawn after it came online (never mid-round).
    log = fed.procs["coordinator"].log_path.read_text()
    back = log.index("client late-3 online")
    later = [int(m[1]) for m in re.finditer(r"round (\d)/6: model published", log) if m.start() > back]
    assert joined == later, (joined, later)


def test_client_with_missing_data_names_the_problem(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    out = subprocess.run([sys.executable, "-m", "edge_client", "--dataset", str(missing), "--client-id", "x"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(missing) in out.stderr and "image folder" in out.stderr

