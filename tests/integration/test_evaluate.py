"""`python -m coordinator evaluate MODEL` as a real process on a .keras file saved by this Keras, compiled or not,
and on its .tflite export."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.local_federation import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 300


def evaluate(model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", "evaluate", str(model), "--config",
                           str(REPO_ROOT / "config" / "default.toml"), "--max-examples", str(EXAMPLES)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project's Fashion-MNIST model saved twice: never compiled, and compiled (optimizer state included)."""
    import keras

    from federation.learning.models import build_model, compile_model

    out = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    plain = build_model("small_cnn", (28, 28, 1), 10)
    plain.save(out / "uncompiled.keras")
    compiled = build_model("small_cnn", (28, 28, 1), 10)
    compile_model(compiled)
    compiled.save(out / "compiled.keras")
    from coordinator.export import export_tflite

    export_tflite(compiled, out, "float32")
    return {"uncompiled": out / "uncompiled.keras", "compiled": out / "compiled.keras",
            "tflite": out / "model.tflite"}


@pytest.mark.parametrize("which", ["compiled", "uncompiled", "tflite"])
def test_evaluate_prints_accuracy_and_loss_of_a_saved_model(saved_models: dict[str, Path], which: str) -> None:
    out = evaluate(saved_models[which])
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.search(r"test accuracy (\d\.\d{4}), loss (\d+\.\d{4}) on (\d+) examples of fashion_mnist", out.stdout)
    assert found, out.stdout
    accuracy, loss, examples = float(found[1]), float(found[2]), int(found[3])
    assert examples == EXAMPLES and 0.0 <= accuracy <= 1.0
    assert 1.0 < loss < 4.0, "an untrained 10-class model: about ln(10) = 2.3"


# ---- labels beside and inside the exported models ------------------------------------------------------------


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.mark.parametrize("variant", ["float32", "dynamic", "int8"])
def test_an_exported_tflite_model_carries_its_labels_and_has_a_labels_file(tmp_path: Path, variant: str) -> None:
    import keras
    import numpy as np

    from coordinator.export import LABELS_FILE, export_tflite, read_labels
    from federation.inference.runtime import TFLiteClassifier
    from federation.learning.models import build_model

    keras.utils.set_random_seed(1)
    model = build_model("small_cnn", (28, 28, 1), 10)
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1)).astype(np.float32)
    path = export_tflite(model, tmp_path, variant, images, class_names=FASHION)
    assert (tmp_path / LABELS_FILE).read_text(encoding="utf-8") == "\n".join(FASHION) + "\n"
    assert read_labels(path.read_bytes()) == FASHION, "the labels travel inside the .tflite too"
    plain = tmp_path / "plain"
    plain.mkdir()
    unlabelled = export_tflite(model, plain, variant, images)
    assert read_labels(unlabelled.read_bytes()) == () and not (plain / LABELS_FILE).exists()
    labelled, bare = TFLiteClassifier(path), TFLiteClassifier(unlabelled)
    np.testing.assert_array_equal(labelled.predict(images[:4]), bare.predict(images[:4]),
                                  "adding the labels changed nothing else in the model")


def test_labels_with_a_newline_are_refused(tmp_path: Path) -> None:
    from coordinator.export import write_labels

    with pytest.raises(ValueError, match="one class name per line"):
        write_labels(tmp_path, ("a", "b\nc"))
