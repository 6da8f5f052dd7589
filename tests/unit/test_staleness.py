"""Tests for coordinator.staleness: FedBuff's staleness weighting, the past versions kept, and the weighted delta
that a stale update feeds into a step (checked against FedBuff's sum over a buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import ClientResult, FedAvg
from coordinator.staleness import StalenessRule, VersionHistory, weighted_update


def test_polynomial_weight_is_one_over_sqrt_one_plus_staleness() -> None:
    rule = StalenessRule(max_staleness=4)
    assert [rule.weight(s) for s in range(4)] == pytest.approx([1.0, 2 ** -0.5, 3 ** -0.5, 0.5])
    assert StalenessRule(4, "polynomial", 1.0).weight(3) == pytest.approx(0.25)
    assert StalenessRule(4, "constant").weight(3) == 1.0
    with pytest.raises(ValueError, match="negative staleness"):
        rule.weight(-1)


def test_too_stale_is_beyond_max_staleness() -> None:
    rule = StalenessRule(max_staleness=2)
    assert [rule.too_stale(s) for s in range(4)] == [False, False, False, True]
    with pytest.raises(ValueError, match="unknown staleness weighting"):
        StalenessRule(2, "hinge")


def test_history_keeps_the_last_versions_only_and_copies_them() -> None:
    history = VersionHistory(keep=3)
    source = [np.zeros(2, np.float32)]
    for v in range(1, 6):
        source[0][:] = v
        history.add(v, source)
    assert history.versions == [3, 4, 5]
    assert 2 not in history and history.get(2) is None
    np.testing.assert_array_equal(history.get(4)[0], [4, 4])   # a copy: later writes to the source did not leak


def test_a_buffer_of_weighted_updates_gives_fedbuffs_step() -> None:
    """FedAvg over current + w_i * (update_i - base_i), weighted by examples, is current + sum n_i w_i d_i / sum n_i."""
    rng = np.random.default_rng(0)
    versions = {v: [rng.normal(size=(3, 2)).astype(np.float32)] for v in (5, 6, 7)}
    current = versions[7]
    rule = StalenessRule(max_staleness=3)
    arrivals = [(5, 10), (7, 30), (6, 20)]  # (base version, examples)
    updates = [[versions[b][0] + rng.normal(scale=0.1, size=(3, 2)).astype(np.float32)] for b, _ in arrivals]
    agg = FedAvg()
    agg.begin(current)
    for k, ((base, n), update) in enumerate(zip(arrivals, updates)):
        agg.add(ClientResult(f"c{k}", n, weighted_update(current, versions[base], update, rule.weight(7 - base))))
    want = current[0].astype(np.float64) + sum(
        n * rule.weight(7 - b) * (u[0].astype(np.float64) - versions[b][0]) for (b, n), u in zip(arrivals, updates)
    ) / sum(n for _, n in arrivals)
    np.testing.assert_allclose(agg.result()[0], want, rtol=1e-5, atol=1e-6)


def test_a_fresh_update_enters_unchanged_and_integer_tensors_are_not_scaled() -> None:
    current = [np.ones(3, np.float32), np.array([4], np.int64)]
    update = [np.full(3, 2.0, np.float32), np.array([9], np.int64)]
    np.testing.assert_array_equal(weighted_update(current, current, update, 1.0)[0], update[0])
    half = weighted_update(current, current, update, 0.5)
    np.testing.assert_allclose(half[0], [1.5, 1.5, 1.5])
    assert half[1].dtype == np.int64 and half[1][0] == 9
