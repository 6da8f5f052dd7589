"""FedAdam (Reddi et al., 2021), with Flower's parameter names and update rule (bias-corrected step size).

m = beta_1 m + (1 - beta_1) delta; v = beta_2 v + (1 - beta_2) delta^2; next = current + eta_t m / (sqrt(v) + tau)."""

from __future__ import annotations

import numpy as np

from coordinator.server_optimizers.base import ServerOptimizer, Weights


class FedAdam(ServerOptimizer):
    name = "fedadam"

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-9) -> None:
        super().__init__()
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau

    def _update(self, deltas: Weights) -> Weights:
        m_t, v_t = self._first_moment(deltas, self.beta_1), self._moment("v", deltas)
        for v, d in zip(v_t, deltas):
            v *= self.beta_2
            v += (1 - self.beta_2) * d * d
        # Flower counts server rounds from 1 and corrects with power (round + 1); self.rounds is that round.
        t = self.rounds + 1.0
        eta_t = self.eta * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        return [eta_t * m / (np.sqrt(v) + self.tau) for m, v in zip(m_t, v_t)]
