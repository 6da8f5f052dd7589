"""Export a Keras model to TFLite: float32, dynamic-range or full-integer int8.

The int8 variant calibrates on representative images and takes uint8 pixels as input."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

VARIANT_FILES = {"float32": "model.tflite", "dynamic": "model_dynamic.tflite", "int8": "model_int8.tflite"}
# How far each variant's test accuracy may fall from the Keras model's, in percentage points (README, tests).
ACCURACY_BOUND_POINTS = {"float32": 0.1, "dynamic": 0.5, "int8": 1.0}


def convert_to_tflite(model: "keras.Model", variant: str = "float32",  # noqa: F821
                      representative_images: np.ndarray | None = None, tflite_runtime_compat: bool = False) -> bytes:
    """The .tflite bytes of `model`. `tflite_runtime_compat` makes the dynamic variant loadable by tflite-runtime
    2.14, which lacks the per-channel FULLY_CONNECTED kernels that TF 2.21 emits for dense layers by default."""
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
            raise ValueError("int8 export needs representative images")
        converter.representative_dataset = lambda: _representative(representative_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    # The converter prints the traced signature to stdout; keep the coordinator's output readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def _representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in images:
        yield [image[None].astype(np.float32)]


def export_tflite(model: "keras.Model", out_dir: Path, variant: str,  # noqa: F821
                  representative_images: np.ndarray | None = None, tflite_runtime_compat: bool = False) -> Path:
    """Write `variant` of `model` into out_dir under its standard file name, atomically."""
    content = convert_to_tflite(model, variant, representative_images, tflite_runtime_compat)
    path = Path(out_dir) / VARIANT_FILES[variant]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    log.info("exported %s TFLite model to %s (%d bytes)", variant, path, len(content))
    return path
