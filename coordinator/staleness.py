"""Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022): how much a stale update counts, and the past
versions of the global model that deltas are measured against.

An update trained on version b and arriving at version v has staleness s = v - b. It enters the round's aggregation
rule as current + weight(s) * (update - version_b): fresh updates as they are, stale ones as a shrunken delta."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

Weights = list[np.ndarray]


@dataclass(frozen=True)
class StalenessRule:
    """Which updates an async step takes, and their weight: (1 + s)^-exponent ("polynomial") or 1 ("constant")."""

    max_staleness: int
    weighting: str = "polynomial"
    exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be at least 0")
        if self.weighting not in ("polynomial", "constant"):
            raise ValueError(f"unknown staleness weighting {self.weighting!r} (polynomial or constant)")

    def weight(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"negative staleness {staleness}: an update can't be trained on a future version")
        if self.weighting == "constant":
            return 1.0
        return float((1.0 + staleness) ** -self.exponent)

    def too_stale(self, staleness: int) -> bool:
        return staleness > self.max_staleness


class VersionHistory:
    """The global weights of the last `keep` versions: what a stale update's delta is measured against.

    Memory: `keep` copies of the model (max_staleness + 1), whatever the number of devices or updates."""

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep at least the current version")
        self.keep = keep
        self._versions: OrderedDict[int, Weights] = OrderedDict()

    def add(self, version: int, weights: Weights) -> None:
        self._versions[version] = [np.array(w, copy=True) for w in weights]
        self._versions.move_to_end(version)
        while len(self._versions) > self.keep:
            self._versions.popitem(last=False)

    def get(self, version: int) -> Weights | None:
        return self._versions.get(version)

    def __contains__(self, version: int) -> bool:
        return version in self._versions

    @property
    def versions(self) -> list[int]:
        return list(self._versions)


def weighted_update(current: Weights, base: Weights, update: Weights, weight: float) -> Weights:
    """current + weight * (update - base), in each tensor's dtype: what a stale update contributes to an async step.

    Floating tensors move by the weighted delta; others (integer counters) take the update's value as it is."""
    out = []
    for c, b, u in zip(current, base, update):
        if not np.issubdtype(c.dtype, np.floating):
            out.append(u)
            continue
        delta = u.astype(np.float64) - b.astype(np.float64)
        out.append((c.astype(np.float64) + weight * delta).astype(c.dtype))
    return out
