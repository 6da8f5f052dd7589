"""FedYogi (Reddi et al., 2021), with Flower's parameter names and update rule.

m = beta_1 m + (1 - beta_1) delta; v = v - (1 - beta_2) delta^2 sign(v - delta^2); next = current + eta m / (sqrt(v) + tau)."""

from __future__ import annotations

import numpy as np

from coordinator.server_optimizers.base import ServerOptimizer, Weights


class FedYogi(ServerOptimizer):
    name = "fedyogi"

    def __init__(self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__()
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau

    def _update(self, deltas: Weights) -> Weights:
        m_t, v_t = self._first_moment(deltas, self.beta_1), self._moment("v", deltas)
        for v, d in zip(v_t, deltas):
            square = d * d
            v -= (1 - self.beta_2) * square * np.sign(v - square)
        return [self.eta * m / (np.sqrt(v) + self.tau) for m, v in zip(m_t, v_t)]
