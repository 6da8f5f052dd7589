"""The model's architecture and compile recipe on the wire (global_model.model.architecture): Keras JSON, its
sha256, and the loss, metrics and optimizer, so that a device builds any Keras model with no code of its own.

Pure: validates the maps only; building the model is the device's job (edge_client.model_builder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from federation.protocol.byte_chunks import is_sha256_hex
from federation.protocol.codec import DecodeError, wire_repr

ARCHITECTURE_FORMATS = ("keras",)
MAX_CONFIG_BYTES = 4 * 1024 * 1024    # a model's Keras JSON; ResNet-50's is about 0.1 MB
MAX_RECIPE_METRICS = 32
MAX_NAME_CHARS = 200                  # a loss or metric name, a Keras version


@dataclass(frozen=True)
class CompileRecipe:
    """What a device passes to model.compile: Keras's serialized loss, metrics and optimizer.

    `loss` and each metric are a Keras name ("mse", "accuracy") or a serialized object ({"class_name": "Huber",
    "config": {...}, "module": ...}); `optimizer` is keras.optimizers.serialize(...) ({"class_name": "Adam",
    "config": {"learning_rate": 0.001, ...}, "module": "keras.optimizers"})."""

    loss: str | dict[str, Any]
    metrics: tuple[str | dict[str, Any], ...] = ()
    optimizer: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"loss": self.loss, "metrics": list(self.metrics), "optimizer": self.optimizer}

    @classmethod
    def from_wire(cls, raw: Any) -> "CompileRecipe":
        m = _map(raw, "architecture.compile")
        loss = _keras_object(m.get("loss"), "architecture.compile: loss")
        metrics = m.get("metrics", [])
        if not isinstance(metrics, list) or len(metrics) > MAX_RECIPE_METRICS:
            raise DecodeError(f"architecture.compile: metrics must be a list of at most {MAX_RECIPE_METRICS} "
                              f"names or maps, got {wire_repr(metrics)}")
        checked = tuple(_keras_object(item, "architecture.compile: metric") for item in metrics)
        optimizer = _keras_object(m.get("optimizer"), "architecture.compile: optimizer")
        if not isinstance(optimizer, dict):
            raise DecodeError(f"architecture.compile: optimizer must be a map {{class_name, config}}, got "
                              f"{wire_repr(optimizer)}")
        return cls(loss=loss, metrics=checked, optimizer=optimizer)

    @property
    def loss_name(self) -> str:
        """The loss's Keras name, or its class name: what the task is told from."""
        return keras_object_name(self.loss)

    @property
    def optimizer_name(self) -> str:
        return keras_object_name(self.optimizer)

    @property
    def learning_rate(self) -> float | None:
        """The optimizer's learning rate when it is a number (None: a schedule, or none given)."""
        config = self.optimizer.get("config") if isinstance(self.optimizer, dict) else None
        value = config.get("learning_rate") if isinstance(config, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelArchitecture:
    """The model itself: Keras's JSON of the architecture (`config`, UTF-8 bytes), its sha256, and the recipe."""

    config: bytes
    compile: CompileRecipe
    keras_version: str = ""
    format: str = "keras"
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", config_digest(self.config))

    def to_wire(self) -> dict[str, Any]:
        return {"format": self.format, "keras_version": self.keras_version, "sha256": self.sha256,
                "config": self.config, "compile": self.compile.to_wire()}

    @classmethod
    def from_wire(cls, raw: Any) -> "ModelArchitecture":
        m = _map(raw, "architecture")
        fmt = m.get("format")
        if fmt not in ARCHITECTURE_FORMATS:
            raise DecodeError(f"architecture: unknown format {wire_repr(fmt)} (this software reads "
                              f"{', '.join(ARCHITECTURE_FORMATS)})")
        version = m.get("keras_version", "")
        if not isinstance(version, str) or len(version) > MAX_NAME_CHARS:
            raise DecodeError(f"architecture: keras_version must be a short str, got {wire_repr(version)}")
        config = m.get("config")
        if not isinstance(config, bytes):
            raise DecodeError(f"architecture: config must be bin (the UTF-8 bytes of the Keras JSON), got "
                              f"{type(config).__name__}")
        if not config or len(config) > MAX_CONFIG_BYTES:
            raise DecodeError(f"architecture: config of {len(config)} bytes is out of range (1..{MAX_CONFIG_BYTES})",
                              "too_large" if config else "malformed")
        digest = m.get("sha256")
        if not isinstance(digest, str) or not is_sha256_hex(digest):
            raise DecodeError(f"architecture: sha256 must be 64 lowercase hex digits, got {wire_repr(digest)}")
        if config_digest(config) != digest:
            raise DecodeError("architecture: sha256 does not match the config bytes (a corrupted or forged model)",
                              "bad_hash")
        return cls(config=config, compile=CompileRecipe.from_wire(m.get("compile")), keras_version=version,
                   format=fmt, sha256=digest)


def config_digest(config: bytes) -> str:
    """sha256 of the architecture's JSON bytes: its identity, and the key devices cache the built model by."""
    return hashlib.sha256(config).hexdigest()


def keras_object_name(obj: Any) -> str:
    """The name of a serialized Keras object: the string itself, or the map's class_name ("" if neither)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("class_name"), str):
        return obj["class_name"]
    return ""


def _keras_object(value: Any, what: str) -> str | dict[str, Any]:
    """A serialized Keras object: a non-empty name, or a map with a str class_name and a map config."""
    if isinstance(value, str):
        if not value or len(value) > MAX_NAME_CHARS:
            raise DecodeError(f"{what}: a name of 1..{MAX_NAME_CHARS} characters, got {wire_repr(value)}")
        return value
    if isinstance(value, dict):
        name = value.get("class_name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise DecodeError(f"{what}: a map needs a class_name (str), got {wire_repr(value)}")
        if not isinstance(value.get("config", {}), dict):
            raise DecodeError(f"{what}: config of {name!r} must be a map")
        return value
    raise DecodeError(f"{what}: expected a Keras name (str) or a serialized object (map), got "
                      f"{type(value).__name__} {wire_repr(value)}")


def _map(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DecodeError(f"{what}: expected a map, got {type(raw).__name__}")
    return raw
