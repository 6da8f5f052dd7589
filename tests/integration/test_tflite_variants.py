"""TFLite variants of a Fashion-MNIST model: each stays within its stated accuracy bound of Keras under LiteRT, and
the tflite_runtime_compat export runs on tflite-runtime 2.14 (numpy<2) in its own virtual environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.export import ACCURACY_BOUND_POINTS, convert_to_tflite
from federation.learning.datasets import load_dataset
from federation.inference.runtime import TFLiteClassifier
from tests.deploy_support import REPO_ROOT
from tests.venvs import TFLITE_RUNTIME_REQUIREMENTS, cached_venv

pytestmark = pytest.mark.timeout(600)

TRAIN_EXAMPLES = 12_000
TEST_EXAMPLES = 2_000


@dataclass(frozen=True)
class Exported:
    keras_accuracy: float
    files: dict[str, Path]
    npz: Path          # the test images and labels
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A small CNN trained for 2 epochs on 12,000 images, exported as every variant (dynamic also compat)."""
    import keras

    from federation.learning.models import build_model, compile_model

    data = load_dataset("fashion_mnist")
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    compile_model(model)
    model.fit(data.x_train[:TRAIN_EXAMPLES], data.y_train[:TRAIN_EXAMPLES], epochs=2, batch_size=64, verbose=0)
    x, y = data.x_test[:TEST_EXAMPLES], data.y_test[:TEST_EXAMPLES]
    keras_accuracy = float(model.evaluate(x, y, batch_size=500, verbose=0)[1])
    out = tmp_path_factory.mktemp("variants")
    files = {}
    for name, variant, compat in [("float32", "float32", False), ("dynamic", "dynamic", False),
                                  ("int8", "int8", False), ("dynamic_compat", "dynamic", True)]:
        files[name] = out / f"{name}.tflite"
        files[name].write_bytes(convert_to_tflite(model, variant, x[:200], tflite_runtime_compat=compat))
    np.savez(out / "test.npz", x=x, y=y)
    return Exported(keras_accuracy, files, out / "test.npz", x, y)


def litert_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    classifier = TFLiteClassifier(path)
    assert classifier.runtime == "ai-edge-litert"
    return float((classifier.predict(x).argmax(1) == y).mean())


def test_each_variant_stays_within_its_bound_of_keras(exported: Exported) -> None:
    e = exported
    assert e.keras_accuracy > 0.8, "the model must be trained well enough for the bounds to mean something"
    deltas = {}
    for name in ("float32", "dynamic", "int8", "dynamic_compat"):
        variant = name.removesuffix("_compat")
        deltas[name] = 100 * (litert_accuracy(e.files[name], e.x, e.y) - e.keras_accuracy)
        assert abs(deltas[name]) <= ACCURACY_BOUND_POINTS[variant], (name, deltas)
    sizes = {name: path.stat().st_size for name, path in e.files.items()}
    assert sizes["int8"] <= 0.27 * sizes["float32"], sizes
    assert sizes["dynamic"] <= 0.27 * sizes["float32"] and sizes["dynamic_compat"] <= 0.27 * sizes["float32"], sizes
    int8 = TFLiteClassifier(e.files["int8"])
    assert int8.input_format.dtype == "uint8" and int8.output_format.dtype == "uint8"
    assert int8.input_format.scale > 0 and int8.output_format.scale > 0


@pytest.fixture(scope="module")
def tflite_runtime_python() -> Path:
    """A venv with tflite-runtime 2.14 and numpy<2 (and the rest of an edge device's packages), built once, cached."""
    assert sys.version_info[:2] <= (3, 11), (
        f"tflite-runtime 2.14 has wheels for Python 3.8 to 3.11 only; these tests run on {sys.version.split()[0]}: "
        "build .venv with Python 3.11 (PYTHON=python3.11 bash scripts/setup.sh)")
    python = cached_venv("tflite-runtime-2.14", TFLITE_RUNTIME_REQUIREMENTS)
    probe = subprocess.run(
        [str(python), "-c", "import numpy, tflite_runtime; print(tflite_runtime.__version__, numpy.__version__)\n"
                            "for m in ('ai_edge_litert', 'tensorflow'):\n"
                            "    try:\n        __import__(m)\n    except ImportError:\n        print('no', m)"],
        capture_output=True, text=True, cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert probe.returncode == 0, probe.stderr
    versions, *missing = probe.stdout.split("\n")
    assert versions.split()[0] == "2.14.0" and versions.split()[1].startswith("1."), probe.stdout
    assert "no ai_edge_litert" in missing and "no tensorflow" in missing, probe.stdout
    return python


def predict_in(python: Path, model: Path, inputs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "edge_client", "predict", str(model), str(inputs), "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_tflite_runtime_2_14_runs_the_compat_export_and_fails_without_it(exported: Exported,
                                                                          tflite_runtime_python: Path) -> None:
    e = exported
    plain = predict_in(tflite_runtime_python, e.files["dynamic"], e.npz)
    assert plain.returncode == 2, plain.stdout[-500:]
    assert "does not load as a TFLite model" in plain.stderr and "FULLY_CONNECTED" in plain.stderr, plain.stderr
    for name in ("dynamic_compat", "float32", "int8"):
        out = predict_in(tflite_runtime_python, e.files[name], e.npz)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        doc = json.loads(out.stdout)
        assert doc["model"]["runtime"] == "tflite-runtime" and doc["examples"] == TEST_EXAMPLES
        variant = name.removesuffix("_compat")
        delta = 100 * (doc["accuracy"] - e.keras_accuracy)
        assert abs(delta) <= ACCURACY_BOUND_POINTS[variant], (name, doc["accuracy"], e.keras_accuracy)
