"""FedAvg (McMahan et al., 2017): the average of client weights, weighted by their example counts.

Streaming: a float64 running weighted sum, so memory is two model copies whatever the client count. A delta update
(compressed uplink) is added as n x delta, a top-k one sparsely; the global weights are added once at the end,
weighted by the example counts of the delta updates. Float tensors are averaged, BatchNormalization's moving
statistics included; non-float ones (a Normalization layer's int64 count) keep the global value: an average of
counters or states means nothing."""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import Aggregator, ClientResult, Weights, check_result, is_float
from coordinator.aggregation.deltas import add_into


class FedAvg(Aggregator):
    streaming = True

    def __init__(self) -> None:
        self._sum: Weights = []
        self._global: Weights = []
        self._dtypes: list[np.dtype] = []
        self._total = 0
        self._delta_examples = 0   # examples of the delta updates: the global weights count that many times
        self._count = 0

    def begin(self, global_weights: Weights) -> None:
        self._sum = [np.zeros(w.shape, dtype=np.float64) for w in global_weights]
        self._global = list(global_weights)
        self._dtypes = [w.dtype for w in global_weights]
        self._total = 0
        self._delta_examples = 0
        self._count = 0

    def add(self, result: ClientResult) -> None:
        if result.deltas is not None:
            self._add_deltas(result)
            return
        if result.num_examples <= 0:
            raise ValueError(f"update from {result.client_id}: num_examples must be positive")
        if len(result.weights) != len(self._sum):
            raise ValueError(f"update from {result.client_id}: {len(result.weights)} tensors, expected {len(self._sum)}")
        for acc, w in zip(self._sum, result.weights):
            if w.shape != acc.shape:
                raise ValueError(f"update from {result.client_id}: shape {w.shape}, expected {acc.shape}")
        for acc, w in zip(self._sum, result.weights):
            acc += w * np.float64(result.num_examples)   # computed in float64: one temporary, not two
        self._total += result.num_examples
        self._count += 1

    def _add_deltas(self, result: ClientResult) -> None:
        check_result(result, self._global)
        assert result.deltas is not None
        for acc, d in zip(self._sum, result.deltas):
            add_into(acc, d, result.num_examples)   # a non-float tensor's "delta" is its value
        self._delta_examples += result.num_examples
        self._total += result.num_examples
        self._count += 1

    def result(self) -> Weights:
        if not self._count:
            raise ValueError("FedAvg: no update was added this round")
        out = []
        for acc, g, dtype in zip(self._sum, self._global, self._dtypes):
            if not is_float(g):
                out.append(np.array(g))
                continue
            total = acc + self._delta_examples * np.asarray(g, dtype=np.float64) if is_float(g) and \
                self._delta_examples else acc
            out.append((total / self._total).astype(dtype))
        return out

    @property
    def count(self) -> int:
        return self._count
