"""The server-optimizer interface: a step from the current global weights along the round's aggregated delta.

FedOpt (Reddi et al., 2021) and FedAvgM (Hsu et al., 2019) act on the aggregate, so aggregation stays streaming."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

Weights = list[np.ndarray]
OptimizerState = dict[str, np.ndarray]   # flat, numbers only: it goes into the checkpoint's .npz


class ServerOptimizer(ABC):
    """Contract: `step(current, aggregate)` returns the next global weights (same shapes and dtypes).

    `aggregate` is what the aggregation rule made of the round's updates; its difference from `current` is the
    round's delta (the negative pseudo-gradient). Only tensors marked as stepped (`stepped`, by default every
    floating tensor) move by the optimizer's rule: the others (BatchNormalization's moving statistics, integer
    counters) take the aggregate as it is, since momentum on a variance could make it negative. `state()`
    and `load_state()` carry the moments across a coordinator restart."""

    name: str = ""

    def __init__(self) -> None:
        self.rounds = 0                    # steps taken so far (FedAdam's bias correction counts them)
        self._moments: dict[str, Weights] = {}

    def step(self, current: Weights, aggregate: Weights, stepped: list[bool] | None = None) -> Weights:
        if len(current) != len(aggregate):
            raise ValueError(f"{self.name}: {len(aggregate)} aggregated tensors for {len(current)} global ones")
        mask = stepped if stepped is not None else [True] * len(current)
        mask = [m and np.issubdtype(c.dtype, np.floating) for m, c in zip(mask, current)]
        deltas = [a.astype(np.float64) - c.astype(np.float64) for a, c in zip(aggregate, current)]
        self.rounds += 1
        moved = self._update(deltas)
        return [(c.astype(np.float64) + m).astype(c.dtype) if keep else a
                for c, a, m, keep in zip(current, aggregate, moved, mask)]

    @abstractmethod
    def _update(self, deltas: Weights) -> Weights:
        """Update the moments with this round's deltas (float64) and return how far each tensor moves."""

    def _moment(self, key: str, like: Weights) -> Weights:
        if key not in self._moments or [m.shape for m in self._moments[key]] != [d.shape for d in like]:
            self._moments[key] = [np.zeros(d.shape, dtype=np.float64) for d in like]
        return self._moments[key]

    def _first_moment(self, deltas: Weights, beta_1: float) -> Weights:
        """FedOpt's momentum, updated in place: m = beta_1 m + (1 - beta_1) delta."""
        m_t = self._moment("m", deltas)
        for m, d in zip(m_t, deltas):
            m *= beta_1
            m += (1 - beta_1) * d
        return m_t

    def state(self) -> OptimizerState:
        """The moments and the step count, as named arrays for the checkpoint."""
        state = {"rounds": np.array(self.rounds, dtype=np.int64)}
        for key, tensors in self._moments.items():
            for i, t in enumerate(tensors):
                state[f"{key}.{i}"] = t
        return state

    def load_state(self, state: OptimizerState) -> None:
        """Restore what `state()` saved (a resumed run continues with the same moments)."""
        self.rounds = int(state.get("rounds", 0))
        moments: dict[str, dict[int, np.ndarray]] = {}
        for name, value in state.items():
            key, _, index = name.rpartition(".")
            if key and index.isdigit():
                moments.setdefault(key, {})[int(index)] = np.asarray(value, dtype=np.float64)
        self._moments = {key: [parts[i] for i in range(len(parts))] for key, parts in moments.items()}
