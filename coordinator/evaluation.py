"""Central evaluation of a model on the held-out test set: a Keras model or a .tflite file.

`evaluate_file` backs `python -m coordinator evaluate MODEL`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from federation.config.settings import DataSettings
from federation.learning.datasets import Dataset
from federation.learning.own_data import TableOptions
from federation.inference.runtime import TFLiteClassifier
from federation.learning.models import compile_model

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    examples: int


def evaluate_keras(model: "keras.Model", x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Evaluation:
    if not getattr(model, "compiled", False):  # Keras 3.15 has no `optimizer` attribute before compile()
        compile_model(model)
    loss, acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return Evaluation(float(loss), float(acc), len(x))


def evaluate_tflite(model: bytes | str | Path, x: np.ndarray, y: np.ndarray) -> Evaluation:
    return evaluate_classifier(TFLiteClassifier(model), x, y)


def evaluate_classifier(classifier: TFLiteClassifier, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Accuracy and loss of an already loaded .tflite model."""
    probs = classifier.predict(x)
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return Evaluation(float(-np.log(picked).mean()), float((probs.argmax(1) == y).mean()), len(x))


def table_options(data: DataSettings) -> TableOptions:
    """The [data] settings: how the coordinator makes examples from a CSV [model] dataset."""
    return TableOptions(kind=data.kind, label=data.label, features=tuple(data.features), scaling=data.scaling,
                        test_file=data.test_file, test_fraction=data.test_fraction, seed=data.seed,
                        window=data.window, stride=data.stride, target=data.target, horizon=data.horizon)


def test_split(dataset: Dataset, max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if len(dataset.x_test) == 0:
        raise ValueError(f"dataset {dataset.name} has no test split to evaluate on")
    n = max_examples or len(dataset.x_test)
    return dataset.x_test[:n], dataset.y_test[:n]


def evaluate_file(path: Path, dataset: Dataset, max_examples: int = 0) -> Evaluation:
    """Evaluate a saved .keras or .tflite model on `dataset`'s test split."""
    x, y = test_split(dataset, max_examples)
    if path.suffix == ".tflite":
        return evaluate_tflite(path, x, y)
    if path.suffix == ".keras":
        import keras

        # compile=False: the saved optimizer state is not needed to evaluate, and evaluate_keras compiles the
        # model with the project's loss and metrics whatever the file was saved with.
        return evaluate_keras(keras.models.load_model(path, compile=False), x, y)
    raise ValueError(f"{path}: expected a .keras or .tflite file")
