"""FedAdagrad (Reddi et al., 2021), with Flower's parameter names and update rule.

m = beta_1 m + (1 - beta_1) delta; v = v + delta^2; next = current + eta m / (sqrt(v) + tau)."""

from __future__ import annotations

import numpy as np

from coordinator.server_optimizers.base import ServerOptimizer, Weights


class FedAdagrad(ServerOptimizer):
    name = "fedadagrad"

    def __init__(self, eta: float = 0.1, beta_1: float = 0.0, tau: float = 1e-9) -> None:
        super().__init__()
        self.eta, self.beta_1, self.tau = eta, beta_1, tau

    def _update(self, deltas: Weights) -> Weights:
        m_t, v_t = self._first_moment(deltas, self.beta_1), self._moment("v", deltas)
        for v, d in zip(v_t, deltas):
            v += d * d
        return [self.eta * m / (np.sqrt(v) + self.tau) for m, v in zip(m_t, v_t)]
