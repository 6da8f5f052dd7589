"""Aggregation rules behind one small interface (base.Aggregator), one module per rule.

`make_aggregator(name)` builds the rule named in the config."""

from __future__ import annotations

from coordinator.aggregation.base import Aggregator, ClientResult, Weights
from coordinator.aggregation.fedavg import FedAvg

AGGREGATORS: dict[str, type[Aggregator]] = {"fedavg": FedAvg}


def make_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation rule {name!r}; available: {', '.join(sorted(AGGREGATORS))}")
    return AGGREGATORS[name]()


__all__ = ["AGGREGATORS", "Aggregator", "ClientResult", "FedAvg", "Weights", "make_aggregator"]
