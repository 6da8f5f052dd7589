"""Server-side optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) behind one small interface, one module each.

`make_server_optimizer(settings)` builds the one named in [server_optimizer], or None for plain FedAvg steps."""

from __future__ import annotations

from coordinator.server_optimizers.base import OptimizerState, ServerOptimizer, Weights
from coordinator.server_optimizers.fedadagrad import FedAdagrad
from coordinator.server_optimizers.fedadam import FedAdam
from coordinator.server_optimizers.fedavgm import FedAvgM
from coordinator.server_optimizers.fedyogi import FedYogi
from federation.config.settings import ServerOptimizerSettings

# Flower's defaults where a setting is 0: eta and tau differ by algorithm.
DEFAULT_ETA = {"fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}
DEFAULT_TAU = {"fedadam": 1e-9, "fedyogi": 1e-3, "fedadagrad": 1e-9}


def make_server_optimizer(s: ServerOptimizerSettings) -> ServerOptimizer | None:
    """The optimizer [server_optimizer] names, with its parameters; None for "none" (the aggregate is the model)."""
    if s.name == "none":
        return None
    if s.name == "fedavgm":
        return FedAvgM(s.server_learning_rate, s.server_momentum)
    eta, tau = s.eta or DEFAULT_ETA[s.name], s.tau or DEFAULT_TAU[s.name]
    if s.name == "fedadam":
        return FedAdam(eta, s.beta_1, s.beta_2, tau)
    if s.name == "fedyogi":
        return FedYogi(eta, s.beta_1, s.beta_2, tau)
    return FedAdagrad(eta, 0.0, tau)   # Flower's FedAdagrad keeps no momentum


__all__ = ["FedAdagrad", "FedAdam", "FedAvgM", "FedYogi", "OptimizerState", "ServerOptimizer", "Weights",
           "make_server_optimizer"]
