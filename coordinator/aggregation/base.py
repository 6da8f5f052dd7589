"""The aggregation interface: a rule consumes client updates one at a time, then yields new weights.

Streaming rules keep O(model) memory whatever the number of clients; rules needing every update say so."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

Weights = list[np.ndarray]


@dataclass(frozen=True)
class ClientResult:
    """One validated update as the aggregator sees it."""

    client_id: str
    num_examples: int
    weights: Weights


class Aggregator(ABC):
    """Contract: `begin(global_weights)`, then `add(result)` once per accepted update, then `result()`.

    `add` must not keep references to `result.weights` unless `streaming` is False.
    `result()` with no update added raises ValueError. `begin` resets all state."""

    streaming: bool = True

    @abstractmethod
    def begin(self, global_weights: Weights) -> None:
        """Start a round from the current global weights."""

    @abstractmethod
    def add(self, result: ClientResult) -> None:
        """Consume one client's update."""

    @abstractmethod
    def result(self) -> Weights:
        """The new global weights, same shapes and dtypes as those given to `begin`."""

    @property
    @abstractmethod
    def count(self) -> int:
        """Number of updates added this round."""

    def report(self) -> dict[str, Any]:
        """What the rule did in the round just aggregated (JSON-ready; e.g. clipped or excluded clients)."""
        return {}

    def resume(self, reports: list[dict[str, Any]]) -> None:
        """Carry state over from the rounds of a resumed run (their `report()`s); most rules have none."""


def check_result(result: ClientResult, global_weights: Weights) -> None:
    """ValueError naming the client when its update does not fit the round's global weights."""
    if result.num_examples <= 0:
        raise ValueError(f"update from {result.client_id}: num_examples must be positive")
    if len(result.weights) != len(global_weights):
        raise ValueError(f"update from {result.client_id}: {len(result.weights)} tensors, "
                         f"expected {len(global_weights)}")
    for w, g in zip(result.weights, global_weights):
        if np.shape(w) != np.shape(g):
            raise ValueError(f"update from {result.client_id}: shape {np.shape(w)}, expected {np.shape(g)}")


def is_float(array: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)
