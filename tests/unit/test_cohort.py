"""Tests for coordinator.cohort: the seeded, reproducible sample of online clients that trains in a round."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.cohort import SamplingRule

FLEET = [f"dev-{i:04d}" for i in range(1000)]


def test_everyone_by_default() -> None:
    assert SamplingRule().sample(["b", "a", "c"], 1) == {"a", "b", "c"}


def test_fifty_of_a_thousand() -> None:
    rule = SamplingRule(fraction_train=0.05, min_train_clients=2, min_available_clients=2)
    cohort = rule.sample(FLEET, 3)
    assert len(cohort) == 50 and cohort <= set(FLEET)


def test_max_train_clients_caps_the_sample() -> None:
    rule = SamplingRule(fraction_train=1.0, max_train_clients=50)
    assert len(rule.sample(FLEET, 1)) == 50


def test_min_train_clients_raises_a_small_fraction() -> None:
    rule = SamplingRule(fraction_train=0.001, min_train_clients=7)
    assert len(rule.sample(FLEET, 1)) == 7
    assert rule.size(3) == 3    # never more than are online


def test_reproducible_and_independent_of_order() -> None:
    rule = SamplingRule(fraction_train=0.1, seed=42)
    assert rule.sample(FLEET, 5) == rule.sample(list(reversed(FLEET)), 5)
    assert rule.sample(FLEET, 5) != rule.sample(FLEET, 6), "each round draws anew"
    assert rule.sample(FLEET, 5) != SamplingRule(fraction_train=0.1, seed=43).sample(FLEET, 5)


def test_every_client_is_picked_about_equally_often() -> None:
    rule = SamplingRule(fraction_train=0.1, seed=1)
    fleet = FLEET[:100]
    counts = Counter(cid for r in range(1, 501) for cid in rule.sample(fleet, r))
    # 500 rounds x 10 of 100: each client expects 50 picks; binomial sd ~ 6.7
    assert min(counts.values()) > 20 and max(counts.values()) < 80, counts.most_common(3)


@given(st.integers(1, 300), st.floats(0.001, 1.0), st.integers(1, 50), st.integers(0, 60))
def test_size_rule(online: int, fraction: float, min_train: int, cap: int) -> None:
    rule = SamplingRule(fraction_train=fraction, min_train_clients=min_train, max_train_clients=cap)
    k = rule.size(online)
    expected = max(min_train, math.ceil(round(fraction * online, 9)))
    if cap:
        expected = min(expected, cap)
    assert k == min(expected, online)


@pytest.mark.parametrize("kwargs", [{"fraction_train": 0.0}, {"fraction_train": 1.5}, {"min_train_clients": 0},
                                    {"max_train_clients": -1}])
def test_bad_rules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SamplingRule(**kwargs)
