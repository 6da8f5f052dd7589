"""The aggregation interface: a rule consumes client updates one at a time, then yields new weights.

Streaming rules keep O(model) memory whatever the number of clients; rules needing every update say so."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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
