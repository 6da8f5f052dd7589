"""The compile recipe of a model (loss, metrics, optimizer) and the task it implies: taken from a compiled model,
made for an uncompiled one from the task's defaults and [training], and applied with model.compile.

Telling the task and making the default recipe need no TensorFlow; `recipe_of` and `compile_with` import Keras."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.errors import FedmqError
from federation.protocol.architecture import CompileRecipe, keras_object_name

if TYPE_CHECKING:
    import keras

CLASSIFICATION, REGRESSION = "classification", "regression"
# Keras loss names and class names, normalised (lower case, no underscores), by the task they train for.
_CLASSIFICATION_LOSSES = {
    "sparsecategoricalcrossentropy", "binarycrossentropy", "binaryfocalcrossentropy",
    "categoricalcrossentropy", "categoricalfocalcrossentropy", "hinge", "squaredhinge", "categoricalhinge",
    "kldivergence", "kld", "kullbackleiblerdivergence",
}
_REGRESSION_LOSSES = {
    "mse", "mae", "mape", "msle", "meansquarederror", "meanabsoluteerror", "meanabsolutepercentageerror",
    "meansquaredlogarithmicerror", "huber", "huberloss", "logcosh", "poisson", "cosinesimilarity",
}
# Losses that take one-hot labels: fedmq's labels are class indices (the order of class_names), made one-hot for
# these on the device and the coordinator (fitting_labels).
ONE_HOT_LOSSES = {"categoricalcrossentropy", "categoricalfocalcrossentropy", "categoricalhinge"}
BINARY_LOSSES = {"binarycrossentropy", "binaryfocalcrossentropy", "hinge", "squaredhinge"}
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}   # [training] optimizer -> Keras class


class RecipeError(FedmqError, ValueError):
    """A compile recipe fedmq can't train with: an unknown loss, several outputs."""


def normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def task_of(recipe: CompileRecipe) -> str:
    """"classification" for cross-entropies and hinges, "regression" for mse, mae, huber, log_cosh and the like."""
    name = normalised(recipe.loss_name)
    if name in _CLASSIFICATION_LOSSES:
        return CLASSIFICATION
    if name in _REGRESSION_LOSSES:
        return REGRESSION
    raise RecipeError(
        f"can't tell the task of the loss {recipe.loss_name or recipe.loss!r}: fedmq trains classifiers with a "
        "cross-entropy (sparse_categorical_crossentropy, binary_crossentropy) and regressions with mse, mae, huber, "
        "log_cosh, mape or msle. Compile the model with one of those")


def takes_one_hot(loss: Any) -> bool:
    """Whether a compiled model's loss (a name, a Keras loss object or function) takes one-hot labels."""
    name = loss if isinstance(loss, str) else (getattr(loss, "name", None) or getattr(loss, "__name__", None) or "")
    return normalised(str(name)) in ONE_HOT_LOSSES


def fitting_labels(model: Any, y: np.ndarray) -> np.ndarray:
    """The labels as the compiled `model`'s loss takes them: fedmq's labels are class indices (the order of
    class_names); a loss that takes one-hot labels (categorical_crossentropy, categorical_focal_crossentropy,
    categorical_hinge) gets one float32 row per example, as wide as the model's output."""
    if not takes_one_hot(getattr(model, "loss", None)):
        return y
    classes = int(model.output_shape[-1])
    return np.eye(classes, dtype=np.float32)[np.asarray(y, dtype=np.int64).reshape(-1)]


def default_recipe(task: str, optimizer: str = "adam", learning_rate: float = 1e-3) -> CompileRecipe:
    """The recipe of a model that comes without one: [training]'s optimizer and learning rate, and the task's loss
    and metrics (classification: sparse_categorical_crossentropy and accuracy; regression: mse, mae)."""
    if optimizer not in OPTIMIZERS:
        raise RecipeError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    serialized = {"module": "keras.optimizers", "class_name": OPTIMIZERS[optimizer],
                  "config": {"learning_rate": float(learning_rate)}, "registered_name": None}
    if task == REGRESSION:
        return CompileRecipe(loss="mse", metrics=("mae",), optimizer=serialized)
    return CompileRecipe(loss="sparse_categorical_crossentropy", metrics=("accuracy",), optimizer=serialized)


def plan_optimizer(recipe: CompileRecipe, fallback: str) -> str:
    """The TrainingPlan's `optimizer` field for this recipe: "adam" or "sgd" when it is one, else `fallback`."""
    name = normalised(keras_object_name(recipe.optimizer))
    return name if name in OPTIMIZERS else fallback


def recipe_of(model: "keras.Model") -> CompileRecipe | None:
    """The recipe of a compiled model (None when it was never compiled); RecipeError for several losses."""
    if not getattr(model, "compiled", False):
        return None
    config: dict[str, Any] = model.get_compile_config() or {}
    loss, metrics, optimizer = config.get("loss"), config.get("metrics"), config.get("optimizer")
    if loss is None:
        return None
    if not isinstance(loss, (str, dict)):
        raise RecipeError(f"the model is compiled with {type(loss).__name__} of losses: fedmq trains models with "
                          "one output and one loss")
    if isinstance(metrics, dict) or (isinstance(metrics, list) and any(isinstance(m, list) for m in metrics)):
        raise RecipeError("the model is compiled with metrics per output: fedmq trains models with one output; "
                          "give a flat list of metrics")
    if isinstance(optimizer, str):
        import keras  # here: start-up speed (the unit tier and the CLI's --help need no TensorFlow)

        optimizer = keras.optimizers.serialize(keras.optimizers.get(optimizer))
    return CompileRecipe(loss=loss, metrics=tuple(metrics or ()), optimizer=optimizer or {})


def compile_with(model: "keras.Model", recipe: CompileRecipe, metrics: tuple[Any, ...] | None = None) -> None:
    """model.compile with the recipe's loss, metrics (or `metrics`) and a fresh optimizer, deserialized in
    Keras's safe mode; RecipeError names what Keras could not make."""
    import keras  # here: start-up speed

    try:
        optimizer = keras.optimizers.deserialize(recipe.optimizer)
        loss = recipe.loss if isinstance(recipe.loss, str) else keras.losses.deserialize(recipe.loss)
        chosen = recipe.metrics if metrics is None else metrics
        made = [m if isinstance(m, str) else keras.metrics.deserialize(m) for m in chosen]
    except Exception as exc:  # Keras raises ValueError, TypeError... for an unknown or malformed object
        raise RecipeError(f"can't make the compile recipe ({recipe.loss_name}, optimizer "
                          f"{recipe.optimizer_name}): {type(exc).__name__}: {str(exc)[:300]}") from None
    model.compile(optimizer=optimizer, loss=loss, metrics=made)
