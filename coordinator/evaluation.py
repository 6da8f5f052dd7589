"""Central evaluation of a model on the held-out test set, by task: a classification's loss and accuracy, a
regression's loss, mean absolute error and root mean squared error; for a Keras model or a .tflite file.

`evaluate_file` backs `python -m coordinator evaluate MODEL`."""

from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from federation.config.settings import DataSettings
from federation.learning.datasets import Dataset
from federation.learning.own_data import TableOptions
from federation.inference.runtime import TFLiteClassifier
from federation.learning.compile_recipe import fitting_labels
from federation.learning.models import compile_model

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class Evaluation:
    """A model's results on the test set. A regression has `mae` and `rmse` and no accuracy (NaN)."""

    loss: float
    accuracy: float
    examples: int
    mae: float | None = None
    rmse: float | None = None

    @property
    def is_regression(self) -> bool:
        return self.mae is not None

    @property
    def final_accuracy(self) -> float | None:
        """The accuracy to report at the end of a run: None for a regression."""
        return None if self.is_regression else self.accuracy

    def headline(self) -> str:
        """'accuracy 0.8765' or 'MAE 43.21, RMSE 54.32', for log lines."""
        if self.is_regression:
            return f"MAE {self.mae:.4g}, RMSE {self.rmse:.4g}"
        return f"accuracy {self.accuracy:.4f}"

    def describe(self) -> str:
        """The headline and the loss: 'accuracy 0.8765, loss 0.3456'."""
        return f"{self.headline()}, loss {self.loss:.4f}"


def regression_errors(predictions: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(mean absolute error, root mean squared error) over every predicted value; `targets` [N] or [N, outputs],
    `predictions` the same or [N, 1] for one output. ValueError when the shapes don't match."""
    pred = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(targets, dtype=np.float64)
    if pred.ndim == 2 and pred.shape[1] == 1 and true.ndim == 1:
        pred = pred[:, 0]
    if pred.shape != true.shape:
        raise ValueError(f"predictions of shape {pred.shape} for targets of shape {true.shape}")
    if pred.size == 0:
        raise ValueError("no examples to evaluate")
    error = pred - true
    return float(np.abs(error).mean()), float(math.sqrt(float(np.square(error).mean())))


def task_of_targets(y: np.ndarray) -> str:
    """The task a test split's targets imply: float values are a regression's, integer labels a classification's
    (for `evaluate`, which gets a model file and data but no run)."""
    return REGRESSION if np.asarray(y).dtype.kind == "f" else CLASSIFICATION


# Losses that make a regression (Keras names and aliases); any other compiled loss is a classification's.
REGRESSION_LOSSES = frozenset({
    "mse", "mae", "mape", "msle", "huber", "log_cosh", "logcosh", "mean_squared_error", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "huber_loss", "meansquarederror",
    "meanabsoluteerror", "meanabsolutepercentageerror", "meansquaredlogarithmicerror", "logcosh_loss",
})


def task_of_loss(name: str) -> str:
    """regression for a loss named like mse, mae, huber, log_cosh, MeanSquaredError...; else classification."""
    return REGRESSION if str(name).lower().replace("_", "") in _REGRESSION_LOSS_KEYS else CLASSIFICATION


_REGRESSION_LOSS_KEYS = frozenset(n.replace("_", "") for n in REGRESSION_LOSSES)


def task_of_model(model: "keras.Model") -> str:
    """The task a compiled model's loss implies: regression for mse, mae, huber, log_cosh...; else classification."""
    loss = getattr(model, "loss", None)
    return task_of_loss(loss if isinstance(loss, str) else getattr(loss, "name", None) or type(loss).__name__)


def keras_file_task(path: str | Path) -> str | None:
    """The task of a saved .keras file's compile recipe, read from its config.json without loading the model (no
    TensorFlow); None when it was saved uncompiled or can't be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    loss = (config.get("compile_config") or {}).get("loss") if isinstance(config, dict) else None
    if isinstance(loss, dict):
        loss = loss.get("class_name") or (loss.get("config") or {}).get("name")
    return task_of_loss(loss) if isinstance(loss, str) and loss else None


def evaluate_keras(model: "keras.Model", x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                   task: str = CLASSIFICATION) -> Evaluation:
    if task == REGRESSION:
        return _evaluate_keras_regression(model, x, y, batch_size)
    if not getattr(model, "compiled", False):  # Keras 3.15 has no `optimizer` attribute before compile()
        compile_model(model)
    loss, acc = model.evaluate(x, fitting_labels(model, y), batch_size=batch_size, verbose=0)
    return Evaluation(float(loss), float(acc), len(x))


def _evaluate_keras_regression(model: "keras.Model", x: np.ndarray, y: np.ndarray, batch_size: int) -> Evaluation:
    """The loss the model was compiled with (mean squared error when it was not), MAE and RMSE."""
    if not getattr(model, "compiled", False):
        model.compile(loss="mean_squared_error")
    result = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    loss = result[0] if isinstance(result, (list, tuple)) else result
    mae, rmse = regression_errors(model.predict(x, batch_size=batch_size, verbose=0), y)
    return Evaluation(float(loss), float("nan"), len(x), mae, rmse)


def evaluate_tflite(model: bytes | str | Path, x: np.ndarray, y: np.ndarray,
                    task: str = CLASSIFICATION) -> Evaluation:
    return evaluate_loaded(TFLiteClassifier(model), x, y, task)


def evaluate_loaded(model: TFLiteClassifier, x: np.ndarray, y: np.ndarray, task: str = CLASSIFICATION) -> Evaluation:
    """An already loaded .tflite model's results: a classification's as evaluate_classifier, a regression's MAE
    and RMSE with the mean squared error as its loss (the .tflite holds no compile recipe)."""
    if task != REGRESSION:
        return evaluate_classifier(model, x, y)
    mae, rmse = regression_errors(model.predict(x), y)
    return Evaluation(rmse * rmse, float("nan"), len(x), mae, rmse)


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
    """Evaluate a saved .keras or .tflite model on `dataset`'s test split (a regression when its targets are
    floats, see task_of_targets)."""
    x, y = test_split(dataset, max_examples)
    task = task_of_targets(y)
    if path.suffix == ".tflite":
        return evaluate_tflite(path, x, y, task)
    if path.suffix == ".keras":
        import keras

        # compile=False: the saved optimizer state is not needed to evaluate, and evaluate_keras compiles the
        # model with the project's loss and metrics whatever the file was saved with.
        return evaluate_keras(keras.models.load_model(path, compile=False), x, y, task=task)
    raise ValueError(f"{path}: expected a .keras or .tflite file")
