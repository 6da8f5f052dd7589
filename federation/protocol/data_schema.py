"""The `data` map of the global model's `model` map: how a device turns its CSV file into the model's inputs.

Column names in order, the label column, the coordinator's scaling statistics, and the series windowing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from federation.protocol.codec import DecodeError, wire_repr

DATA_KINDS = ("table", "series")
SERIES_TARGETS = ("last", "future")   # the label of the window's last row, or a value `horizon` rows after it
MAX_FEATURES = 4096
MAX_COLUMN_NAME = 256                 # characters of one column name
MAX_WINDOW = 100_000                  # rows of one series window
MAX_SCALE_VALUE = 1e30                # |mean| and std beyond this are refused (finite float32 on every device)


@dataclass(frozen=True)
class DataSchema:
    """What a device needs to make the model's inputs from its own CSV file.

    kind "table": one example per row, inputs (len(features),). kind "series": windows of `window` consecutive
    rows every `stride` rows, inputs (window, len(features)); the target is the label column's value at the
    window's last row (target "last") or `horizon` rows after it (target "future"). `mean` and `std` (one per
    feature, or both empty) standardize each feature: (value - mean) / std."""

    kind: str
    features: tuple[str, ...]
    label: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    window: int = 0        # series only: rows per example
    stride: int = 0        # series only: rows between the starts of two windows
    target: str = "last"   # series only
    horizon: int = 0       # series, target "future": rows after the window's last row

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(f"data schema: {problem}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model input shape this schema makes: (features,) or (window, features)."""
        if self.kind == "series":
            return self.window, len(self.features)
        return (len(self.features),)

    @property
    def scaled(self) -> bool:
        return bool(self.mean)

    def problem(self) -> str:
        """Why these fields are not a valid schema ("" when they are)."""
        if self.kind not in DATA_KINDS:
            return f"unknown kind {wire_repr(self.kind)} (one of {', '.join(DATA_KINDS)})"
        if not 1 <= len(self.features) <= MAX_FEATURES:
            return f"{len(self.features)} features (need 1..{MAX_FEATURES})"
        for name in (*self.features, self.label):
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_COLUMN_NAME:
                return f"column name {wire_repr(name)} is not a str of 1..{MAX_COLUMN_NAME} characters"
        if len(set(self.features)) != len(self.features):
            return "feature names repeat"
        if len(self.mean) != len(self.std) or (self.mean and len(self.mean) != len(self.features)):
            return (f"{len(self.mean)} means and {len(self.std)} stds for {len(self.features)} features "
                    "(one of each per feature, or none)")
        if not all(_is_number(m) and abs(m) <= MAX_SCALE_VALUE for m in self.mean):
            return "a mean is not a finite number"
        if not all(_is_number(s) and 0 < s <= MAX_SCALE_VALUE for s in self.std):
            return "a std is not a finite number > 0"
        return self._series_problem()

    def _series_problem(self) -> str:
        if self.kind == "table":
            if self.window or self.stride or self.horizon or self.target != "last":
                return "window, stride, target and horizon apply to series only"
            return ""
        if not 1 <= self.window <= MAX_WINDOW or not 1 <= self.stride <= MAX_WINDOW:
            return f"window {self.window} and stride {self.stride} must be 1..{MAX_WINDOW}"
        if self.target not in SERIES_TARGETS:
            return f"unknown target {wire_repr(self.target)} (one of {', '.join(SERIES_TARGETS)})"
        if self.target == "future" and not 1 <= self.horizon <= MAX_WINDOW:
            return f"target future needs a horizon of 1..{MAX_WINDOW} rows, got {self.horizon}"
        if self.target == "last" and self.horizon:
            return "a horizon applies to target future only"
        return ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"kind": self.kind, "features": list(self.features), "label": self.label}
        if self.mean:
            wire["mean"] = list(self.mean)
            wire["std"] = list(self.std)
        if self.kind == "series":
            wire.update(window=self.window, stride=self.stride, target=self.target, horizon=self.horizon)
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> "DataSchema":
        """Decode and validate the `data` map; DecodeError names the first problem."""
        if not isinstance(raw, dict):
            raise DecodeError(f"model data: expected a map, got {type(raw).__name__}")
        fields: dict[str, Any] = {}
        for key, kind in (("kind", str), ("label", str)):
            fields[key] = _field(raw, key, kind)
        fields["features"] = _str_list(raw, "features")
        fields["mean"], fields["std"] = _float_list(raw, "mean"), _float_list(raw, "std")
        if fields["kind"] == "series":
            for key in ("window", "stride", "horizon"):
                fields[key] = _field(raw, key, int)
            fields["target"] = _field(raw, "target", str)
        schema = object.__new__(cls)  # validate before constructing, so the error is a DecodeError
        for key, value in {**_DEFAULTS, **fields}.items():
            object.__setattr__(schema, key, value)
        problem = schema.problem()
        if problem:
            raise DecodeError(f"model data: {problem}")
        return schema


_DEFAULTS: dict[str, Any] = {"mean": (), "std": (), "window": 0, "stride": 0, "target": "last", "horizon": 0}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(raw: dict[str, Any], key: str, kind: type) -> Any:
    if key not in raw:
        raise DecodeError(f"model data: missing field {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DecodeError(f"model data: field {key!r} has type {type(value).__name__}, expected {kind.__name__}")
    return value


def _str_list(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = _field(raw, key, list)
    if len(value) > MAX_FEATURES or not all(isinstance(v, str) for v in value):
        raise DecodeError(f"model data: {key} must be a list of at most {MAX_FEATURES} str")
    return tuple(value)


def _float_list(raw: dict[str, Any], key: str) -> tuple[float, ...]:
    if raw.get(key) is None:
        return ()
    value = _field(raw, key, list)
    if len(value) > MAX_FEATURES or not all(_is_number(v) for v in value):
        raise DecodeError(f"model data: {key} must be a list of at most {MAX_FEATURES} finite numbers")
    return tuple(float(v) for v in value)
