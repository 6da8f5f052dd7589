"""Updates sent as deltas against the round's global weights (PROTOCOL.md "Encoded tensors"): dense or top-k
sparse, added into a running sum, measured, scaled and turned back into weights without densifying a sparse one.

A delta update holds, per tensor, a delta for every floating tensor and the value itself for any other."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from federation.protocol.encodings import SparseDelta

Delta = np.ndarray | SparseDelta


def squared_norm(delta: Delta) -> float:
    """sum(delta^2): one BLAS dot (float32 for float32 and float16 values, float64 for float64 ones)."""
    values = delta.values if isinstance(delta, SparseDelta) else np.asarray(delta)
    flat = values.reshape(-1)
    if flat.dtype != np.float64 and flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return float(np.dot(flat, flat))


def scaled(delta: Delta, factor: float) -> Delta:
    if isinstance(delta, SparseDelta):
        return SparseDelta(delta.shape, delta.indices, (delta.values.astype(np.float64) * factor)
                           .astype(delta.values.dtype))
    return (np.asarray(delta, dtype=np.float64) * factor).astype(np.asarray(delta).dtype)


def add_into(acc: np.ndarray, delta: Delta, factor: float = 1.0) -> None:
    """acc += factor x delta, in place (acc: a C-contiguous float64 array); a top-k delta touches k elements."""
    if isinstance(delta, SparseDelta):
        flat = acc.reshape(-1)   # a view: acc is contiguous
        flat[delta.indices] += factor * delta.values.astype(np.float64)
    else:
        acc += np.asarray(delta) * np.float64(factor)   # one float64 temporary, not two


def dense_weights(deltas: Sequence[Delta], global_weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The weights a delta update stands for: global + delta for floating tensors, the value for others."""
    out = []
    for d, g in zip(deltas, global_weights):
        g = np.asarray(g)
        if g.dtype.kind != "f":
            out.append(np.asarray(d.dense() if isinstance(d, SparseDelta) else d))
            continue
        w = g.astype(np.float64)
        add_into(w, d)
        out.append(w.astype(g.dtype))
    return out
