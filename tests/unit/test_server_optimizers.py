"""Tests for coordinator.server_optimizers: each rule against a numpy reference of Flower's update rule, over
several rounds; tensors that must not move; the moments' state across a restart; the settings' defaults."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.server_optimizers import (
    FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOptimizer, make_server_optimizer,
)
from federation.config.settings import ConfigError, load_settings

SHAPES = [(3, 4), (4,), (2, 2, 2)]


def rounds_of_aggregates(seed: int, count: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    # Each round's aggregate is a noisy move away from wherever the model is: given as a delta, added later.
    deltas = [[rng.normal(scale=0.1, size=s) for s in SHAPES] for _ in range(count)]
    return start, deltas


def reference_trajectory(kind: str, params: dict[str, float], start: list[np.ndarray],
                         deltas: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Flower 1.41's formulas, written out per round with fresh arrays (no in-place updates)."""
    x = [w.astype(np.float64) for w in start]
    m = [np.zeros_like(w) for w in x]
    v = [np.zeros_like(w) for w in x]
    out = []
    for server_round, round_deltas in enumerate(deltas, start=1):
        aggregate = [w + d for w, d in zip(x, round_deltas)]
        delta = [a - w for a, w in zip(aggregate, x)]
        if kind == "fedavgm":
            pseudo = [w - a for w, a in zip(x, aggregate)]
            m = pseudo if server_round == 1 else [params["server_momentum"] * mm + p for mm, p in zip(m, pseudo)]
            x = [w - params["server_learning_rate"] * mm for w, mm in zip(x, m)]
        else:
            b1 = params.get("beta_1", 0.0)
            m = [b1 * mm + (1 - b1) * d for mm, d in zip(m, delta)]
            if kind == "fedadagrad":
                v = [vv + d * d for vv, d in zip(v, delta)]
                eta = params["eta"]
            elif kind == "fedadam":
                b2 = params["beta_2"]
                v = [b2 * vv + (1 - b2) * d * d for vv, d in zip(v, delta)]
                eta = params["eta"] * np.sqrt(1 - b2 ** (server_round + 1.0)) / (1 - b1 ** (server_round + 1.0))
            else:  # fedyogi
                b2 = params["beta_2"]
                v = [vv - (1.0 - b2) * d * d * np.sign(vv - d * d) for vv, d in zip(v, delta)]
                eta = params["eta"]
            x = [w + eta * mm / (np.sqrt(vv) + params["tau"]) for w, mm, vv in zip(x, m, v)]
        out.append([w.copy() for w in x])
    return out


CASES = [
    ("fedavgm", {"server_learning_rate": 0.7, "server_momentum": 0.9}, lambda p: FedAvgM(**p)),
    ("fedadam", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}, lambda p: FedAdam(**p)),
    ("fedyogi", {"eta": 0.02, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3}, lambda p: FedYogi(**p)),
    ("fedadagrad", {"eta": 0.1, "beta_1": 0.0, "tau": 1e-6}, lambda p: FedAdagrad(**p)),
]


def run_optimizer(opt: ServerOptimizer, start: list[np.ndarray], deltas: list[list[np.ndarray]]) \
        -> list[list[np.ndarray]]:
    x = [w.copy() for w in start]
    out = []
    for round_deltas in deltas:
        aggregate = [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(x, round_deltas)]
        x = opt.step(x, aggregate)
        out.append(x)
    return out


@pytest.mark.parametrize(("kind", "params", "make"), CASES, ids=[c[0] for c in CASES])
def test_each_optimizer_follows_its_reference_rule_over_rounds(kind, params, make) -> None:
    start, deltas = rounds_of_aggregates(1, 6)
    got = run_optimizer(make(params), start, deltas)
    # The reference sees the float32 aggregates the optimizer saw: replay with the optimizer's own trajectory.
    x = [w.copy() for w in start]
    exact_deltas = []
    for round_deltas, after in zip(deltas, got):
        aggregate = [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(x, round_deltas)]
        exact_deltas.append([a.astype(np.float64) - w.astype(np.float64) for a, w in zip(aggregate, x)])
        x = after
    want = reference_trajectory(kind, params, start, exact_deltas)
    for round_got, round_want in zip(got, want):
        for g, w in zip(round_got, round_want):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_the_step_is_not_the_aggregate() -> None:
    """A server optimizer that returned FedAvg's aggregate would pass a sloppy reference: it must move elsewhere."""
    start, deltas = rounds_of_aggregates(2, 1)
    aggregate = [(w + d).astype(np.float32) for w, d in zip(start, deltas[0])]
    moved = FedAdam(eta=0.1).step(start, aggregate)
    assert not all(np.allclose(m, a) for m, a in zip(moved, aggregate))
    assert FedAvgM(1.0, 0.0).step(start, aggregate)[0] == pytest.approx(aggregate[0])  # plain FedAvg


def test_tensors_not_stepped_take_the_aggregate() -> None:
    """BatchNormalization's moving variance (not trainable) and integer tensors are never pushed by momentum."""
    current = [np.ones((2, 2), np.float32), np.ones(3, np.float32), np.array([5, 7], np.int64)]
    aggregate = [np.full((2, 2), 2.0, np.float32), np.full(3, 0.5, np.float32), np.array([6, 8], np.int64)]
    out = FedAdam(eta=1.0).step(current, aggregate, stepped=[True, False, True])
    assert not np.allclose(out[0], aggregate[0])
    np.testing.assert_array_equal(out[1], aggregate[1])
    np.testing.assert_array_equal(out[2], aggregate[2])
    assert out[2].dtype == np.int64


@pytest.mark.parametrize(("kind", "params", "make"), CASES, ids=[c[0] for c in CASES])
def test_state_round_trip_continues_the_same_trajectory(kind, params, make) -> None:
    start, deltas = rounds_of_aggregates(3, 5)
    straight = run_optimizer(make(params), start, deltas)
    first = make(params)
    middle = run_optimizer(first, start, deltas[:2])[-1]
    state = {k: np.array(v) for k, v in first.state().items()}   # as saved in and loaded from an .npz
    resumed = make(params)
    resumed.load_state(state)
    after = run_optimizer(resumed, middle, deltas[2:])
    for g, w in zip(after[-1], straight[-1]):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    fresh = run_optimizer(make(params), middle, deltas[2:])  # without the state the trajectory differs
    if kind != "fedavgm" or params["server_momentum"]:
        assert not all(np.allclose(g, w) for g, w in zip(fresh[-1], straight[-1]))


def test_mismatched_tensor_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="2 aggregated tensors for 1"):
        FedYogi().step([np.zeros(2, np.float32)], [np.zeros(2, np.float32)] * 2)


def test_settings_build_the_named_optimizer_with_flowers_defaults() -> None:
    assert make_server_optimizer(load_settings(None).server_optimizer) is None
    yogi = make_server_optimizer(load_settings(None, {"server_optimizer.name": "fedyogi"}).server_optimizer)
    assert isinstance(yogi, FedYogi) and (yogi.eta, yogi.tau) == (0.01, 1e-3)
    adam = make_server_optimizer(load_settings(None, {"server_optimizer.name": "fedadam",
                                                      "server_optimizer.eta": 0.3}).server_optimizer)
    assert isinstance(adam, FedAdam) and (adam.eta, adam.tau, adam.beta_2) == (0.3, 1e-9, 0.99)
    avgm = make_server_optimizer(load_settings(None, {"server_optimizer.name": "fedavgm",
                                                      "server_optimizer.server_momentum": 0.9}).server_optimizer)
    assert isinstance(avgm, FedAvgM) and avgm.server_momentum == 0.9
    with pytest.raises(ConfigError, match="not one of"):
        load_settings(None, {"server_optimizer.name": "fedsgd"})
    with pytest.raises(ConfigError, match="out of range"):
        load_settings(None, {"server_optimizer.beta_1": 1.0})
