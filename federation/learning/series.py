"""Sensor time series: sliding windows over rows in time order, and each window's target.

A window is `window` consecutive rows, one every `stride` rows; its target is a row's value at or after its end."""

from __future__ import annotations

import numpy as np

from federation.learning.tables import DataMismatchError


def window_starts(num_rows: int, window: int, stride: int, horizon: int = 0, where: str = "the file") -> np.ndarray:
    """First rows of the windows that fit in `num_rows` rows with their target `horizon` rows after the end.

    DataMismatchError when not even one fits (the file is shorter than a window plus the horizon)."""
    if window < 1 or stride < 1 or horizon < 0:
        raise ValueError(f"window {window} and stride {stride} must be >= 1 and horizon {horizon} >= 0")
    last_start = num_rows - window - horizon
    if last_start < 0:
        needed = f"{window} rows" + (f" plus a horizon of {horizon}" if horizon else "")
        raise DataMismatchError(
            f"{where} has {num_rows} rows, fewer than one window of {needed}; record a longer series, or use a "
            "shorter window")
    return np.arange(0, last_start + 1, stride, dtype=np.int64)


def windows(rows: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(len(starts), window, features) copies of `rows` (rows, features) from each start."""
    offsets = starts[:, np.newaxis] + np.arange(window, dtype=np.int64)[np.newaxis, :]
    return np.ascontiguousarray(rows[offsets])


def window_targets(targets: np.ndarray, starts: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """The target of each window: `targets` at its last row plus `horizon`."""
    return targets[starts + window - 1 + horizon]
