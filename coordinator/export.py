"""Export a Keras model to TFLite: float32, dynamic-range or full-integer int8.

The int8 variant calibrates on representative examples (images, table rows or windows); an image model takes uint8
pixels as they are, float features stay float32, and a regression returns float32 values. The class names go into the .tflite (a
metadata entry named fedmq_labels, one name per line) and into labels.txt beside the exported files."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import keras

from federation.protocol.deployed_model import TFLITE_VARIANTS

log = logging.getLogger(__name__)

VARIANT_FILES = dict(zip(TFLITE_VARIANTS, ("model.tflite", "model_dynamic.tflite", "model_int8.tflite"), strict=True))
# How far each variant's test accuracy may fall from the Keras model's, in percentage points (README, tests).
ACCURACY_BOUND_POINTS = dict(zip(TFLITE_VARIANTS, (0.1, 0.5, 1.0), strict=True))
# A regression's: how far each variant's test RMSE may rise above the Keras model's, in percent of it.
RMSE_BOUND_PERCENT = dict(zip(TFLITE_VARIANTS, (0.1, 1.0, 5.0), strict=True))
LABELS_FILE = "labels.txt"      # one class name per line, in class index order
LABELS_METADATA = "fedmq_labels"  # the same text inside the .tflite: a Model.metadata entry of the flatbuffer


def convert_to_tflite(model: "keras.Model", variant: str = "float32",
                      representative_images: np.ndarray | None = None, tflite_runtime_compat: bool = False,
                      class_names: Sequence[str] = (), task: str = "classification") -> bytes:
    """The .tflite bytes of `model`, with `class_names` in its metadata when given. `tflite_runtime_compat` makes
    the dynamic variant loadable by tflite-runtime 2.14, which lacks the per-channel FULLY_CONNECTED kernels that
    TF 2.21 emits for dense layers by default. `representative_images`: any examples of the model's input (int8
    calibration); `task` "regression" keeps the int8 variant's output in float32 (values, not probabilities)."""
    import tensorflow as tf

    if variant not in VARIANT_FILES:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {', '.join(VARIANT_FILES)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "dynamic" and tflite_runtime_compat:
        if not hasattr(converter, "_experimental_disable_per_channel_quantization_for_dense_layers"):
            raise RuntimeError(f"TensorFlow {tf.__version__}'s converter has no option to turn off per-channel "
                               "quantization of dense layers, which tflite_runtime_compat needs (2.21 has it)")
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    if variant == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 export needs representative examples")
        converter.representative_dataset = lambda: _representative(representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # uint8 pixels go in as they are; float features (table rows, windows) stay float32, quantized inside.
        converter.inference_input_type = tf.uint8 if representative_images.dtype == np.uint8 else tf.float32
        converter.inference_output_type = tf.float32 if task == "regression" else tf.uint8
    # The converter prints the traced signature to stdout; keep the coordinator's output readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        content = converter.convert()
    return with_labels(content, class_names) if class_names else content


def labels_text(class_names: Sequence[str]) -> str:
    """labels.txt's text; ValueError for a name that would not fit on one line."""
    for name in class_names:
        if not name or "\n" in name or "\r" in name:
            raise ValueError(f"class name {name!r} can't be written as one class name per line")
    return "".join(f"{name}\n" for name in class_names)


def with_labels(content: bytes, class_names: Sequence[str]) -> bytes:
    """`content` (a .tflite) with labels_text(class_names) in a metadata entry named LABELS_METADATA.

    TFLite's standard label metadata needs the tflite-support package (its metadata schema and writer), whose last
    release (0.4.4, 2023) needs protobuf<4, which TF 2.21 does not allow, and has no aarch64 wheel for Python 3.11;
    a named metadata buffer needs only the flatbuffer schema TF ships (tensorflow.lite.tools.flatbuffer_utils), and
    runtimes ignore entries they do not know."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(labels_text(class_names).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = LABELS_METADATA
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (LABELS_METADATA, LABELS_METADATA.encode())]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_labels(content: bytes) -> tuple[str, ...]:
    """The class names stored by with_labels in a .tflite, or () when it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(content), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == LABELS_METADATA.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return tuple(bytes(data).decode("utf-8").splitlines())
    return ()


def write_labels(out_dir: Path, class_names: Sequence[str]) -> Path:
    """Write LABELS_FILE into out_dir (one class name per line), atomically."""
    path = Path(out_dir) / LABELS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(labels_text(class_names), encoding="utf-8")
    tmp.replace(path)
    return path


def _representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in images:
        yield [image[None].astype(np.float32)]


def export_tflite(model: "keras.Model", out_dir: Path, variant: str,
                  representative_images: np.ndarray | None = None, tflite_runtime_compat: bool = False,
                  class_names: Sequence[str] = (), task: str = "classification") -> Path:
    """Write `variant` of `model` into out_dir under its standard file name, atomically; with `class_names`,
    also labels.txt beside it and the labels inside it."""
    content = convert_to_tflite(model, variant, representative_images, tflite_runtime_compat, class_names, task)
    if class_names:
        write_labels(out_dir, class_names)
    return write_tflite(out_dir, variant, content)


def write_tflite(out_dir: Path, variant: str, content: bytes) -> Path:
    """Write `content`, a .tflite of `variant`, into out_dir under its standard file name, atomically."""
    path = Path(out_dir) / VARIANT_FILES[variant]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    log.info("exported %s TFLite model to %s (%d bytes)", variant, path, len(content))
    return path
