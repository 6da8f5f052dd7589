"""Model builders and their registry: plain Keras functions, looked up by name.

Coordinator and clients build the same model from (name, input_shape, num_classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from federation.errors import FedmqError
from federation.protocol.codec import TensorSpec

if TYPE_CHECKING:
    import keras
    import numpy as np

ModelBuilder = Callable[[tuple[int, ...], int], "keras.Model"]
MODEL_REGISTRY: dict[str, ModelBuilder] = {}
DEFAULT_MODEL = "small_cnn"


class ModelError(FedmqError, ValueError):
    """Unknown model name, or weights that do not fit the model."""


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder to the registry under `name`."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        MODEL_REGISTRY[name] = builder
        return builder

    return add


@register_model("small_cnn")
def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> "keras.Model":
    """The reference projects' CNN: Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(classes).

    Takes raw pixel values (0-255); the first layer rescales them."""
    import keras  # here, not at the top: TensorFlow takes seconds to load, and --help, argument errors,
    from keras import layers  # the id check and the unit tests need none of it (start-up of the training client)

    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="image"),
            layers.Rescaling(1.0 / 255, name="rescale"),
            layers.Conv2D(32, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(64, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="small_cnn",
    )


@register_model("dense_classifier")
def dense_classifier(input_shape: tuple[int, ...], num_classes: int) -> "keras.Model":
    """A small Dense network for tables: inputs (features,), best scaled ([data] scaling = "standard")."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="features"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense1"),
            layers.Dense(32, activation="relu", name="dense2"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="dense_classifier",
    )


@register_model("conv1d_classifier")
def conv1d_classifier(input_shape: tuple[int, ...], num_classes: int) -> "keras.Model":
    """A small 1-D CNN for sensor series: inputs (window, features), best scaled ([data] scaling = "standard")."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="window"),
            layers.Conv1D(32, 5, padding="same", activation="relu", name="conv1"),
            layers.Conv1D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.GlobalAveragePooling1D(name="pool"),
            layers.Dense(32, activation="relu", name="dense"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="conv1d_classifier",
    )


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> "keras.Model":
    if name not in MODEL_REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[name](tuple(input_shape), num_classes)


def weight_specs(model: "keras.Model") -> list[TensorSpec]:
    """Names, dtypes and shapes of the model's weights, in wire order."""
    return [TensorSpec(w.path, str(w.dtype), tuple(int(d) for d in w.shape)) for w in model.weights]


def named_weights(model: "keras.Model") -> list[tuple[str, "np.ndarray"]]:
    return [(w.path, w.numpy()) for w in model.weights]


def set_model_weights(model: "keras.Model", weights: list["np.ndarray"]) -> None:
    """model.set_weights, then let every layer recompute what it derives from its state: a Normalization layer
    divides by tensors made from its mean and variance variables when it is loaded or adapted, not when its
    variables are assigned (Keras's finalize_state), so a plain set_weights would leave it using the old ones."""
    model.set_weights(weights)
    for layer in model._flatten_layers(include_self=False):
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize) and layer.built:
            finalize()


def compile_model(model: "keras.Model", optimizer: str = "adam", learning_rate: float = 1e-3) -> None:
    """Compile for classification with integer labels; clients and coordinator use the same setup."""
    import keras  # here, not at the top: start-up speed (see small_cnn)

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    if optimizer not in optimizers:
        raise ModelError(f"unknown optimizer {optimizer!r}; choose from {', '.join(optimizers)}")
    model.compile(optimizer=optimizers[optimizer](learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
