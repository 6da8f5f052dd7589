"""The aggregation interface: a rule consumes client updates one at a time, then yields new weights.

Streaming rules keep O(model) memory whatever the number of clients; rules needing every update say so."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.aggregation.deltas import Delta, dense_weights

Weights = list[np.ndarray]


@dataclass(frozen=True)
class ClientResult:
    """One validated update as the aggregator sees it: whole `weights`, or `deltas` against the round's global
    weights (a compressed uplink; coordinator.aggregation.deltas), a top-k one sparse."""

    client_id: str
    num_examples: int
    weights: Weights = field(default_factory=list)
    deltas: list[Delta] | None = None

    def dense(self, global_weights: Weights) -> "ClientResult":
        """The same update as whole weights (rules that need them: median, trimmed mean, Multi-Krum)."""
        if self.deltas is None:
            return self
        return ClientResult(self.client_id, self.num_examples, dense_weights(self.deltas, global_weights))


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
    tensors = result.weights if result.deltas is None else result.deltas
    if len(tensors) != len(global_weights):
        raise ValueError(f"update from {result.client_id}: {len(tensors)} tensors, "
                         f"expected {len(global_weights)}")
    for w, g in zip(tensors, global_weights):
        if tuple(w.shape) != np.shape(g):
            raise ValueError(f"update from {result.client_id}: shape {tuple(w.shape)}, expected {np.shape(g)}")


def is_float(array: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(array).dtype, np.floating)
