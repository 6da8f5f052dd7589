"""Per-update L2 norm clipping of the update delta (update - global model), in front of any other rule.

Wraps a rule: each delta longer than clip_norm is scaled down to it, so no single client can move the model far."""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np

from coordinator.aggregation.base import Aggregator, ClientResult, Weights, check_result, is_float
from coordinator.aggregation.deltas import scaled, squared_norm


def delta_norm(weights: Weights, global_weights: Weights) -> float:
    """L2 norm of (weights - global_weights) over every floating-point tensor: one subtraction and one BLAS dot per
    tensor, in float32 for float32 weights (float64 only when a tensor is float64)."""
    total = 0.0
    for w, g in zip(weights, global_weights):
        if is_float(g):
            w, g = np.asarray(w), np.asarray(g)
            dtype = np.float64 if np.float64 in (w.dtype, g.dtype) else np.float32
            total += squared_norm(np.subtract(w, g, dtype=dtype))
    return math.sqrt(total)


def clip_to_norm(weights: Weights, global_weights: Weights, clip_norm: float) -> tuple[Weights, float, bool]:
    """(global + delta scaled to at most clip_norm, the delta's norm before clipping, whether it was clipped).

    Non-float tensors are passed through. Unclipped updates come back as the same arrays (no copy)."""
    norm = delta_norm(weights, global_weights)
    if clip_norm <= 0 or norm <= clip_norm:
        return list(weights), norm, False
    scale = clip_norm / norm
    out = []
    for w, g in zip(weights, global_weights):
        if is_float(g):
            g64 = np.asarray(g, dtype=np.float64)
            out.append((g64 + (np.asarray(w, dtype=np.float64) - g64) * scale).astype(np.asarray(w).dtype))
        else:
            out.append(w)
    return out, norm, True


def clip_result(result: ClientResult, global_weights: Weights, clip_norm: float) -> tuple[ClientResult, float, bool]:
    """clip_to_norm for either form of update: a delta update (top-k ones stay sparse) is scaled in place of
    its weights. (the clipped update, the delta's norm before clipping, whether it was clipped)"""
    if result.deltas is None:
        weights, norm, clipped = clip_to_norm(result.weights, global_weights, clip_norm)
        return ClientResult(result.client_id, result.num_examples, weights), norm, clipped
    floats = [is_float(g) for g in global_weights]
    norm = math.sqrt(sum(squared_norm(d) for d, f in zip(result.deltas, floats) if f))
    if clip_norm <= 0 or norm <= clip_norm:
        return result, norm, False
    deltas = [scaled(d, clip_norm / norm) if f else d for d, f in zip(result.deltas, floats)]
    return ClientResult(result.client_id, result.num_examples, deltas=deltas), norm, True


class NormClipping(Aggregator):
    """Clip every delta to `clip_norm` (0: only measure the norms, for the report), then hand the update to `inner`.

    Memory: one extra model copy per clipped update, released once `inner` consumed it (if `inner` streams)."""

    def __init__(self, inner: Aggregator, clip_norm: float = 0.0) -> None:
        if not clip_norm >= 0:
            raise ValueError(f"clip_norm must be >= 0, got {clip_norm}")
        self.inner = inner
        self.clip_norm = clip_norm
        self._global: Weights = []
        self._norms = array("d")   # 8 bytes per update of the round, for the reported median
        self._clipped: list[str] = []

    @property
    def streaming(self) -> bool:  # type: ignore[override]
        return self.inner.streaming

    def begin(self, global_weights: Weights) -> None:
        self._global = [np.asarray(w) for w in global_weights]
        self._norms = array("d")
        self._clipped = []
        self.inner.begin(global_weights)

    def add(self, result: ClientResult) -> None:
        check_result(result, self._global)
        clipped_result, norm, clipped = clip_result(result, self._global, self.clip_norm)
        self.inner.add(clipped_result)
        self._norms.append(norm)
        if clipped:
            self._clipped.append(result.client_id)

    def result(self) -> Weights:
        return self.inner.result()

    @property
    def count(self) -> int:
        return self.inner.count

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.inner.report())
        if self._norms:
            out["update_norm_median"] = round(float(np.median(self._norms)), 6)
            out["update_norm_max"] = round(max(self._norms), 6)
        if self.clip_norm > 0:
            out["clip_norm"] = self.clip_norm
            out["clipped"] = sorted(self._clipped)
        return out
