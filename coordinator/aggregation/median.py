"""Coordinate-wise median (Yin et al., 2018): every weight is the median of the clients' values for it.

Robust to fewer than half of the updates being arbitrary; ignores num_examples (a client can lie about it)."""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.buffered import BufferedAggregator


class CoordinateMedian(BufferedAggregator):
    """Needs every update of the round in memory (O(n x model)); unweighted."""

    name = "median"

    def combine(self, stack: np.ndarray) -> np.ndarray:
        return np.median(stack, axis=0)
