"""Models that are in no registry, for the own-model tests: builders called as [model] builder
"tests.integration.own_models:NAME" with (input_shape, outputs), or saved to a .keras file by the test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


def dense_bn(input_shape: tuple[int, ...], outputs: int, sample: np.ndarray | None = None) -> "keras.Model":
    """Normalization (adapted to `sample`: a float mean and variance, an int64 count), Dense, BatchNormalization,
    Dropout and a softmax: state beyond trainable weights, of float and int dtypes. Compiled with its own recipe, a
    loss that takes one-hot labels."""
    import keras
    from keras import layers

    norm = layers.Normalization(axis=None, name="norm")   # one mean and variance: no pixel of variance 0
    if sample is not None:
        norm.adapt(sample.reshape(len(sample), -1).astype("float32"))
    model = keras.Sequential([
        keras.Input(shape=input_shape, name="pixels"),
        layers.Flatten(name="flat"),
        norm,
        layers.Dense(64, name="hidden"),
        layers.BatchNormalization(name="bn"),
        layers.Activation("relu", name="relu"),
        layers.Dropout(0.1, name="drop"),
        layers.Dense(outputs, activation="softmax", name="classes"),
    ], name="dense_bn")
    # Compiled as many Keras tutorials do it: categorical_crossentropy (label smoothing 0.1) takes one-hot labels;
    # fedmq's labels are class indices, made one-hot for it on the devices and in the coordinator's evaluation.
    model.compile(optimizer=keras.optimizers.Adam(0.002),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["categorical_accuracy"])
    return model


def with_lambda(input_shape: tuple[int, ...], outputs: int) -> "keras.Model":
    """A model with a Lambda layer: safe mode refuses it on every device."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Lambda(lambda x: x / 255.0, name="scale_by_lambda"),
        layers.Flatten(),
        layers.Dense(outputs, activation="softmax"),
    ], name="with_lambda")


def softmax_regression(input_shape: tuple[int, ...], outputs: int) -> "keras.Model":
    """Rescaling, Flatten and one softmax Dense: kernel and bias only, so that a numpy fit function trains it."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Rescaling(1.0 / 255),
        layers.Flatten(),
        layers.Dense(outputs, activation="softmax", name="softmax"),
    ], name="softmax_regression")
