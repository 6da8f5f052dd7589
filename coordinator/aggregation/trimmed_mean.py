"""Coordinate-wise trimmed mean (Yin et al., 2018): per weight, drop the k largest and k smallest client
values, k = floor(trim_fraction x n), and average the rest. Unweighted: a client can lie about num_examples."""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import Weights
from coordinator.aggregation.buffered import BufferedAggregator


class TrimmedMean(BufferedAggregator):
    """Needs every update of the round in memory (O(n x model)). Tolerates up to k outliers per coordinate."""

    name = "trimmed_mean"

    def __init__(self, trim_fraction: float = 0.2) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        super().__init__()
        self.trim_fraction = trim_fraction

    def trimmed_per_side(self, n: int) -> int:
        """k = floor(trim_fraction x n), as scipy.stats.trim_mean counts it."""
        return int(self.trim_fraction * n)

    def result(self) -> Weights:
        self._require_updates()
        k = self.trimmed_per_side(len(self._updates))
        self._report = {"trimmed_per_side": k}
        return super().result()

    def combine(self, stack: np.ndarray) -> np.ndarray:
        n = stack.shape[0]
        k = self.trimmed_per_side(n)
        if k == 0:
            return stack.mean(axis=0)
        return np.sort(stack, axis=0)[k:n - k].mean(axis=0)
