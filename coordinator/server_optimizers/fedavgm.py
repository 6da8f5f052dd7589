"""FedAvgM (Hsu et al., 2019): server SGD with momentum on the pseudo-gradient, with Flower's parameter names.

momentum = server_momentum * momentum + (current - aggregate); next = current - server_learning_rate * momentum."""

from __future__ import annotations

from coordinator.server_optimizers.base import ServerOptimizer, Weights


class FedAvgM(ServerOptimizer):
    name = "fedavgm"

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        super().__init__()
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum

    def _update(self, deltas: Weights) -> Weights:
        momentum = self._moment("momentum", deltas)
        for m, d in zip(momentum, deltas):
            m *= self.server_momentum
            m -= d            # the pseudo-gradient is current - aggregate = -delta
        return [-self.server_learning_rate * m for m in momentum]
