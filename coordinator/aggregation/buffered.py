"""Base class of the rules that need every update of a round in hand: median, trimmed mean, Multi-Krum.

They keep each accepted update until result(): O(n x model) memory, where streaming FedAvg needs O(model)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from coordinator.aggregation.base import Aggregator, ClientResult, Weights, check_result, is_float


class BufferedAggregator(Aggregator):
    """Collects the round's updates; subclasses combine them coordinate by coordinate, or override result()."""

    streaming = False
    name = "buffered"

    def __init__(self) -> None:
        self._global: Weights = []
        self._updates: list[ClientResult] = []
        self._report: dict[str, Any] = {}

    def begin(self, global_weights: Weights) -> None:
        self._global = [np.asarray(w) for w in global_weights]
        self._updates = []
        self._report = {}

    def add(self, result: ClientResult) -> None:
        check_result(result, self._global)
        result = result.dense(self._global)  # a delta update becomes whole weights: these rules compare values
        self._updates.append(result)  # kept by reference: the contract allows it for non-streaming rules

    @property
    def count(self) -> int:
        return len(self._updates)

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def _require_updates(self) -> None:
        if not self._updates:
            raise ValueError(f"{self.name}: no update was added this round")

    def result(self) -> Weights:
        self._require_updates()
        out = []
        for i, g in enumerate(self._global):
            if not is_float(g):  # a counter or a state (Normalization's count): keep the global value
                out.append(np.array(g))
                continue
            stack = np.stack([np.asarray(u.weights[i], dtype=np.float64) for u in self._updates])
            out.append(self.combine(stack).astype(g.dtype))
        return out

    @abstractmethod
    def combine(self, stack: np.ndarray) -> np.ndarray:
        """One tensor's new value from the stack of the clients' values (axis 0: clients), in float64."""
