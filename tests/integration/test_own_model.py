"""Any Keras model, defined once on the coordinator: devices build it from the wire (no registry entry) and train it
with its own recipe (a loss that takes one-hot labels too), refuse a Lambda layer with a reason the coordinator
logs, and a device may train with its own Python fit function.

Real Mosquitto, real coordinator and device processes, real training on Fashion-MNIST subsets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.local_federation import REPO_ROOT, LocalFederation
from federation.learning.datasets import load_dataset

pytestmark = pytest.mark.timeout(400)

EVAL_EXAMPLES = 1000


def _save_dense_bn(path: Path) -> None:
    """The test's own model (tests/integration/own_models.py, in no registry), saved compiled to a .keras file."""
    import keras

    from tests.integration.own_models import dense_bn

    keras.utils.set_random_seed(1)
    sample = load_dataset("fashion_mnist").x_train[:500]
    dense_bn((28, 28, 1), 10, sample).save(path)


def test_a_devices_trains_a_keras_file_model_it_only_knows_from_the_wire(federation: LocalFederation,
                                                                          tmp_path: Path) -> None:
    fed = federation
    model_file = tmp_path / "dense_bn.keras"
    _save_dense_bn(model_file)
    fed.start_coordinator({"model.path": model_file, "training.rounds": 2, "quorum.min_clients": 2,
                           "quorum.round_deadline_s": 120, "evaluation.max_examples": EVAL_EXAMPLES})
    for k in (1, 2):
        fed.start_client(f"dev-{k}", ["--dataset", "fashion_mnist", "--partition", f"{k}/2", "--max-examples", "4000"])
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, (codes, fed.procs["coordinator"].log_tail())

    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2] and all(r["clients"] == 2 for r in rows)
    assert rows[-1]["test_accuracy"] > 0.6, "well above the 0.1 of chance"
    for k in (1, 2):
        device_log = fed.procs[f"dev-{k}"].log_path.read_text()
        assert re.search(r"built the model dense_bn from its architecture \(11 weights, sha256 [0-9a-f]{12}\)",
                         device_log), device_log[-3000:]
        assert device_log.count("built the model") == 1, "built once, then taken from the cache"
    coordinator_log = fed.procs["coordinator"].log_path.read_text()
    # Local metrics come from the model's own recipe (loss and categorical_accuracy), whatever they are. Its loss
    # takes one-hot labels: the devices made them from class indices, and so did the coordinator's evaluation.
    assert "its own compile recipe (loss CategoricalCrossentropy" in coordinator_log, coordinator_log[-3000:]
    lines = [line for line in coordinator_log.splitlines() if re.search(r"update \d/2 from dev-\d \(2000 examples, local", line)]
    assert len(lines) == 4 and all(re.search(r"categorical_accuracy 0\.\d{4}", line) and re.search(r"loss \d", line)
                                   for line in lines), lines
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] < 2.31, "the categorical loss of a model that learns"

    # State beyond trainable weights travelled: BatchNormalization's moving statistics left their initial
    # zeros and ones (devices trained them, FedAvg averaged them); the Normalization layer's int64 count kept
    # the global value, and its mean the file's.
    import keras

    initial = keras.saving.load_model(model_file, compile=False)
    final = keras.saving.load_model(fed.run_dir / "model.keras", compile=False)
    start, end = ({w.path: w.numpy() for w in m.weights} for m in (initial, final))
    assert not np.allclose(end["bn/moving_mean"], 0.0) and not np.allclose(end["bn/moving_variance"], 1.0)
    assert end["norm/count"].dtype == np.int64 and end["norm/count"] == start["norm/count"]
    assert np.array_equal(end["norm/mean"], start["norm/mean"])


def test_a_lambda_layer_is_refused_by_devices_and_the_coordinator_names_the_reason(
        federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"model.builder": "tests.integration.own_models:with_lambda", "training.rounds": 1,
                           "quorum.min_clients": 1, "quorum.round_deadline_s": 20, "quorum.on_no_quorum": "stop",
                           "evaluation.max_examples": 200})
    fed.start_client("dev-1", ["--dataset", "fashion_mnist", "--index-range", "0:200"])
    codes = fed.wait_all(180)
    assert codes == {"coordinator": 1, "dev-1": 3}, codes
    device_log = fed.procs["dev-1"].log_path.read_text()
    coordinator_log = fed.procs["coordinator"].log_path.read_text()
    for log in (device_log, coordinator_log):
        assert "Traceback" not in log, log[-3000:]
    assert "has a Lambda layer (scale_by_lambda)" in device_log and "safe mode" in device_log
    assert re.search(r"client dev-1 can't train this run's model: the model with_lambda has a Lambda layer "
                     r"\(scale_by_lambda\): devices build models in Keras's safe mode", coordinator_log), \
        coordinator_log[-3000:]
    # The coordinator warned at the start already.
    assert "the model has Lambda layers (scale_by_lambda)" in coordinator_log


def test_a_device_with_its_own_numpy_fit_function_completes_a_run_next_to_a_keras_device(
        federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"model.builder": "tests.integration.own_models:softmax_regression", "training.rounds": 2,
                           "quorum.min_clients": 2, "quorum.round_deadline_s": 120, "training.batch_size": 64,
                           "evaluation.max_examples": EVAL_EXAMPLES})
    fed.start_client("numpy-dev", ["--index-range", "0:2000"],
                     program=(str(REPO_ROOT / "tests" / "integration" / "numpy_fit_client.py"),))
    fed.start_client("keras-dev", ["--dataset", "fashion_mnist", "--index-range", "2000:4000"])
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "numpy-dev": 0, "keras-dev": 0}, \
        (codes, fed.procs["numpy-dev"].log_tail())
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["client_ids"] == ["keras-dev", "numpy-dev"] for r in rows)
    assert rows[-1]["test_accuracy"] > 0.6
    numpy_log = fed.procs["numpy-dev"].log_path.read_text()
    assert "numpy client: trained 2 rounds; tensorflow imported: False" in numpy_log, numpy_log[-3000:]


def test_the_coordinator_explains_a_model_source_it_cannot_use(tmp_path: Path) -> None:
    import subprocess

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coordinator", "--run.output_dir", str(tmp_path), *flags],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    missing = run("--model.path", str(tmp_path / "nowhere.keras"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    both = run("--model.path", "a.keras", "--model.builder", "pkg.mod:fn")
    assert both.returncode == 2 and "give one model source" in both.stderr
    unimportable = run("--model.builder", "no_such_package.models:build")
    assert unimportable.returncode == 2 and "can't import no_such_package.models" in unimportable.stderr
    unknown = run("--model.name", "resnet_9000")
    assert unknown.returncode == 2 and "is not a registered model" in unknown.stderr
    assert "Traceback" not in unimportable.stderr + unknown.stderr
