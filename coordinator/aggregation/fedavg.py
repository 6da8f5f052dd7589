"""FedAvg (McMahan et al., 2017): the average of client weights, weighted by their example counts.

Streaming: a float64 running weighted sum, so memory is two model copies whatever the client count. Float tensors
are averaged, BatchNormalization's moving statistics included; non-float ones (a Normalization layer's int64
count) keep the global value: an average of counters or states means nothing."""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import Aggregator, ClientResult, Weights, is_float


class FedAvg(Aggregator):
    streaming = True

    def __init__(self) -> None:
        self._sum: Weights = []
        self._global: Weights = []
        self._total = 0
        self._count = 0

    def begin(self, global_weights: Weights) -> None:
        self._sum = [np.zeros(w.shape, dtype=np.float64) for w in global_weights]
        self._global = list(global_weights)
        self._total = 0
        self._count = 0

    def add(self, result: ClientResult) -> None:
        if result.num_examples <= 0:
            raise ValueError(f"update from {result.client_id}: num_examples must be positive")
        if len(result.weights) != len(self._sum):
            raise ValueError(f"update from {result.client_id}: {len(result.weights)} tensors, expected {len(self._sum)}")
        for acc, w in zip(self._sum, result.weights):
            if w.shape != acc.shape:
                raise ValueError(f"update from {result.client_id}: shape {w.shape}, expected {acc.shape}")
        for acc, w in zip(self._sum, result.weights):
            acc += result.num_examples * w.astype(np.float64, copy=False)
        self._total += result.num_examples
        self._count += 1

    def result(self) -> Weights:
        if not self._count:
            raise ValueError("FedAvg: no update was added this round")
        return [(acc / self._total).astype(g.dtype) if is_float(g) else np.array(g)
                for acc, g in zip(self._sum, self._global)]

    @property
    def count(self) -> int:
        return self._count
