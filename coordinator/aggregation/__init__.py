"""Aggregation rules behind one small interface (base.Aggregator), one module per rule.

`make_aggregator(settings)` builds the rule named in [aggregation], with clipping or differential privacy."""

from __future__ import annotations

import logging


from coordinator.aggregation.base import Aggregator, ClientResult, Weights
from coordinator.aggregation.clipping import NormClipping
from coordinator.aggregation.dp import GaussianDP
from coordinator.aggregation.fedavg import FedAvg
from coordinator.aggregation.krum import MultiKrum
from coordinator.aggregation.median import CoordinateMedian
from coordinator.aggregation.trimmed_mean import TrimmedMean
from federation.config.settings import AggregationSettings, dp_problem

log = logging.getLogger(__name__)

AGGREGATORS: dict[str, type[Aggregator]] = {"fedavg": FedAvg, "median": CoordinateMedian,
                                            "trimmed_mean": TrimmedMean, "multi_krum": MultiKrum}


def make_aggregator(config: str | AggregationSettings) -> Aggregator:
    """The rule for `config`: a rule name (that rule with its defaults), or federation.config.settings'
    AggregationSettings: the rule behind norm clipping (which also reports update norms; with clip_norm 0 only when
    report_norms is on), or central DP."""
    if isinstance(config, str):
        if config not in AGGREGATORS:
            raise ValueError(f"unknown aggregation rule {config!r}; available: {', '.join(sorted(AGGREGATORS))}")
        return AGGREGATORS[config]()
    a = config
    if a.rule not in AGGREGATORS:
        raise ValueError(f"unknown aggregation rule {a.rule!r}; available: {', '.join(sorted(AGGREGATORS))}")
    if problem := dp_problem(a):
        raise ValueError(problem)
    if a.dp_noise_multiplier > 0:
        log.info("aggregation: central DP (clip %g, noise multiplier %g, delta %g); streaming", a.clip_norm,
                 a.dp_noise_multiplier, a.dp_delta)
        return GaussianDP(a.clip_norm, a.dp_noise_multiplier, a.dp_delta, a.dp_total_clients)
    if a.rule == "trimmed_mean":
        rule: Aggregator = TrimmedMean(a.trim_fraction)
    elif a.rule == "multi_krum":
        rule = MultiKrum(a.krum_byzantine, a.krum_select)
    else:
        rule = AGGREGATORS[a.rule]()
    log.info("aggregation: %s%s; %s", a.rule, f" after clipping update deltas to L2 norm {a.clip_norm:g}"
             if a.clip_norm > 0 else "", "streaming (memory: one model)" if rule.streaming
             else "keeps every update of a round in memory (n x model size)")
    if a.clip_norm > 0 or a.report_norms:
        return NormClipping(rule, a.clip_norm)
    return rule   # no norms to clip or report: the rule alone (no per-update norm pass)


__all__ = ["AGGREGATORS", "Aggregator", "ClientResult", "CoordinateMedian", "FedAvg", "GaussianDP", "MultiKrum",
           "NormClipping", "TrimmedMean", "Weights", "make_aggregator"]
