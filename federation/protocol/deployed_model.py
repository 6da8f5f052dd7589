"""What a deployed TFLite model is: version, variant, hash, tensor formats, task, class names, measured accuracy
(or a regression's errors).

Pure data (JSON and msgpack maps), no MQTT and no TensorFlow: inference-only devices import it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from federation.errors import FedmqError
from federation.protocol.byte_chunks import is_sha256_hex

# The TFLite variants, the one list: exported by the coordinator (export.tflite), deployable (deploy.variant).
TFLITE_VARIANTS = ("float32", "dynamic", "int8")
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8", "int16", "int32")
DEPLOYED_TASKS = ("classification", "regression")  # a classifier answers classes, a regression model values


class DeploymentError(FedmqError, ValueError):
    """A deployment description that is incomplete or inconsistent; the message names the field."""


def model_version(run: str, round_: int) -> str:
    """The display form of a deployed model's version: `<run>@<round>` (run ids can't contain '@')."""
    return f"{run}@{round_}"


@dataclass(frozen=True)
class TensorFormat:
    """Shape (without the batch dimension), dtype and affine quantization (real = scale * (q - zero_point)).

    scale 0 means not quantized."""

    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_wire(cls, raw: Any, what: str) -> "TensorFormat":
        if not isinstance(raw, dict):
            raise DeploymentError(f"{what}: expected a map, got {type(raw).__name__}")
        shape, dtype = raw.get("shape"), raw.get("dtype")
        scale, zero = raw.get("scale", 0.0), raw.get("zero_point", 0)
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise DeploymentError(f"{what}: bad shape {shape!r}")
        if dtype not in TENSOR_DTYPES:
            raise DeploymentError(f"{what}: dtype {dtype!r} is not one of {', '.join(TENSOR_DTYPES)}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise DeploymentError(f"{what}: bad scale {scale!r}")
        if isinstance(zero, bool) or not isinstance(zero, int):
            raise DeploymentError(f"{what}: bad zero_point {zero!r}")
        return cls(tuple(shape), dtype, float(scale), zero)


@dataclass(frozen=True)
class DeploymentInfo:
    """Everything about a deployed model except its bytes; stored next to the model file as JSON."""

    run: str
    round: int
    variant: str
    sha256: str
    size: int
    input: TensorFormat
    output: TensorFormat
    class_names: tuple[str, ...]
    test_accuracy: float | None = None
    test_examples: int = 0
    keras_accuracy: float | None = None
    tflite_runtime_compat: bool = False
    created_at: float = 0.0
    format: str = "tflite"
    task: str = "classification"
    test_mae: float | None = None     # regression: this .tflite file's errors on the coordinator's test set
    test_rmse: float | None = None

    def __post_init__(self) -> None:
        if self.task not in DEPLOYED_TASKS:
            raise DeploymentError(f"task {self.task!r} is not one of {', '.join(DEPLOYED_TASKS)}")
        if self.task == "regression" and self.class_names:
            raise DeploymentError("a regression model has no class names")
        if self.variant not in TFLITE_VARIANTS:
            raise DeploymentError(f"variant {self.variant!r} is not one of {', '.join(TFLITE_VARIANTS)}")
        if not is_sha256_hex(self.sha256):
            raise DeploymentError(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.size < 1:
            raise DeploymentError(f"size {self.size} must be positive")
        if self.format != "tflite":
            raise DeploymentError(f"format {self.format!r}: only 'tflite' is known")
        if self.class_names and len(self.class_names) != self.output.shape[-1]:
            raise DeploymentError(f"{len(self.class_names)} class names for a model with {self.output.shape[-1]} "
                                  "outputs")

    @property
    def model_version(self) -> str:
        return model_version(self.run, self.round)

    def fields_to_wire(self) -> dict[str, Any]:
        """The deployment's fields as they appear in a `deployed_model` message (PROTOCOL.md)."""
        return {"model_version": self.model_version, "variant": self.variant, "format": self.format,
                "size": self.size, "sha256": self.sha256, "input": self.input.to_wire(),
                "output": self.output.to_wire(), "class_names": list(self.class_names),
                "test_accuracy": self.test_accuracy, "test_examples": self.test_examples,
                "keras_accuracy": self.keras_accuracy, "tflite_runtime_compat": self.tflite_runtime_compat,
                "created_at": self.created_at, **self._regression_fields()}

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def _regression_fields(self) -> dict[str, Any]:
        """task, test_mae and test_rmse: on the wire only for a regression (a classifier's message is unchanged)."""
        if not self.is_regression:
            return {}
        return {"task": self.task, "test_mae": self.test_mae, "test_rmse": self.test_rmse}

    @classmethod
    def fields_from_wire(cls, raw: dict[str, Any], run: str, round_: int) -> "DeploymentInfo":
        def number(key: str) -> float | None:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DeploymentError(f"{key} {value!r} is not a number")
            return float(value)

        size, names = raw.get("size"), raw.get("class_names", [])
        if isinstance(size, bool) or not isinstance(size, int):
            raise DeploymentError(f"size {size!r} is not an int")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DeploymentError("class_names is not a list of strings")
        examples = raw.get("test_examples", 0)
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
            raise DeploymentError(f"test_examples {examples!r} is not a count")
        for key in ("variant", "sha256", "format"):
            if not isinstance(raw.get(key, "tflite" if key == "format" else None), str):
                raise DeploymentError(f"{key} is missing or not a string")
        task = raw.get("task", "classification")
        if not isinstance(task, str):
            raise DeploymentError("task is not a string")
        return cls(run=run, round=round_, variant=raw["variant"], sha256=raw["sha256"], size=size,
                   input=TensorFormat.from_wire(raw.get("input"), "input"),
                   output=TensorFormat.from_wire(raw.get("output"), "output"), class_names=tuple(names),
                   test_accuracy=number("test_accuracy"), test_examples=examples,
                   keras_accuracy=number("keras_accuracy"),
                   tflite_runtime_compat=raw.get("tflite_runtime_compat") is True,
                   created_at=number("created_at") or 0.0, format=raw.get("format", "tflite"), task=task,
                   test_mae=number("test_mae"), test_rmse=number("test_rmse"))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able map (for the model folder's current.json and the serve status)."""
        out = asdict(self)
        out["input"], out["output"] = self.input.to_wire(), self.output.to_wire()
        out["class_names"] = list(self.class_names)
        out["model_version"] = self.model_version
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "DeploymentInfo":
        if not isinstance(raw, dict) or not isinstance(raw.get("run"), str) or not isinstance(raw.get("round"), int):
            raise DeploymentError("deployment JSON lacks run or round")
        return cls.fields_from_wire(raw, raw["run"], raw["round"])

    def summary(self) -> dict[str, Any]:
        """The short form a serving device reports in its status message."""
        return {"model_version": self.model_version, "run": self.run, "round": self.round, "variant": self.variant,
                "sha256": self.sha256, "size": self.size, "test_accuracy": self.test_accuracy,
                **self._regression_fields()}
