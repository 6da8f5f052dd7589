"""Run a TFLite model (a classifier, or a regression model returning values) with the smallest runtime available:
LiteRT, then tflite-runtime, then TF.

Handles quantized inputs and outputs, and batches by resizing the input tensor. Never imports TensorFlow unless
neither LiteRT (ai_edge_litert) nor tflite_runtime is installed."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from federation.protocol.deployed_model import TensorFormat

log = logging.getLogger(__name__)

_RUNTIMES = (  # (module to import, attribute path of its Interpreter class, runtime name)
    ("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
    # tf.lite.Interpreter lives in TensorFlow's generated API module, not in the `tensorflow.lite` package
    ("tensorflow", "lite.Interpreter", "tensorflow"),
)


def load_interpreter_class() -> tuple[Any, str]:
    """The Interpreter class of the first runtime that imports, and that runtime's name."""
    errors = []
    for module_name, attribute, label in _RUNTIMES:
        try:
            found = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{label}: {exc}")
            continue
        return found, label
    raise ImportError("no TFLite runtime found; install ai-edge-litert (pip install ai-edge-litert). Tried: "
                      + "; ".join(errors))


class TFLiteClassifier:
    """A loaded .tflite model: an image classifier takes raw pixel values (0-255) and gives class probabilities; a
    model of another input (table rows, windows) takes its float features, and a regression model gives values.

    Not thread-safe (one TFLite interpreter): callers serialize predict() calls."""

    def __init__(self, model: bytes | str | Path, num_threads: int | None = None) -> None:
        interpreter_cls, self.runtime = load_interpreter_class()
        content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
        self._interpreter = interpreter_cls(model_content=bytes(content), num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"][1:])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @property
    def num_classes(self) -> int:
        """The outputs per example: classes, or a regression's values."""
        return int(self._output["shape"][-1])

    @property
    def input_format(self) -> TensorFormat:
        return _tensor_format(self._input)

    @property
    def output_format(self) -> TensorFormat:
        return _tensor_format(self._output)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The outputs (float32, [N, outputs]: class probabilities, or values) for inputs shaped [N, *input_shape]."""
        images = np.asarray(images)
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {images.shape[1:]} given to a model expecting {self.input_shape}")
        out = [self._predict_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self._output["shape"][-1]), np.float32)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [len(batch), *self.input_shape])
            self._interpreter.allocate_tensors()
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input["index"], _quantize(batch, self._input))
        self._interpreter.invoke()
        return _dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)


def _tensor_format(detail: dict) -> TensorFormat:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorFormat(tuple(int(d) for d in detail["shape"][1:]), np.dtype(detail["dtype"]).name, float(scale),
                        int(zero))


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    if scale:
        x = np.round(x.astype(np.float32) / scale + zero)
    info = np.iinfo(dtype)
    return np.clip(x, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind != "f" and scale:
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)


def accuracy(classifier: TFLiteClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    predictions = classifier.predict(images).argmax(axis=1)
    return float((predictions == np.asarray(labels)).mean())


def regression_answer(outputs: np.ndarray) -> dict[str, Any]:
    """One example's answer from a regression model: {"value": v} for one output, {"values": [...]} for several."""
    values = [round(float(v), 6) for v in np.asarray(outputs).reshape(-1)]
    return {"value": values[0]} if len(values) == 1 else {"values": values}
