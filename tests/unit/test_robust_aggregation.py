"""Robust aggregation rules and central DP against independent references (numpy, scipy, brute force,
dp-accounting), plus the properties that make them robust: bounded by honest values, outliers excluded."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.stats
from dp_accounting import dp_event, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import (
    AGGREGATORS, Aggregator, ClientResult, CoordinateMedian, FedAvg, GaussianDP, MultiKrum, NormClipping,
    TrimmedMean, make_aggregator,
)
from coordinator.aggregation.clipping import clip_to_norm, delta_norm
from federation.config.settings import AggregationSettings

Case = tuple[list[np.ndarray], list[list[np.ndarray]]]


@st.composite
def rounds(draw: st.DrawFn, min_clients: int = 1, max_clients: int = 9) -> Case:
    """Global float64 weights plus n clients' weights of the same shapes, values in [-100, 100]."""
    shapes = draw(st.lists(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4), min_size=1, max_size=3))
    elements = st.floats(-100, 100, allow_nan=False, width=64)
    global_weights = [draw(hnp.arrays(np.float64, s, elements=elements)) for s in shapes]
    n = draw(st.integers(min_clients, max_clients))
    clients = [[draw(hnp.arrays(np.float64, s, elements=elements)) for s in shapes] for _ in range(n)]
    return global_weights, clients


def aggregate(agg: Aggregator, global_weights: list[np.ndarray], clients: list[list[np.ndarray]],
              examples: list[int] | None = None) -> list[np.ndarray]:
    agg.begin(global_weights)
    for i, w in enumerate(clients):
        agg.add(ClientResult(f"c{i}", examples[i] if examples else 1 + i, w))
    assert agg.count == len(clients)
    return agg.result()


# ---- median and trimmed mean ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(case=rounds())
def test_median_equals_numpy_median(case: Case) -> None:
    g, clients = case
    result = aggregate(CoordinateMedian(), g, clients)
    for i, got in enumerate(result):
        assert got.shape == g[i].shape and got.dtype == g[i].dtype
        np.testing.assert_allclose(got, np.median(np.stack([c[i] for c in clients]), axis=0), rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(case=rounds(), fraction=st.floats(0.0, 0.49))
def test_trimmed_mean_equals_scipy_trim_mean(case: Case, fraction: float) -> None:
    g, clients = case
    result = aggregate(TrimmedMean(fraction), g, clients)
    for i, got in enumerate(result):
        want = scipy.stats.trim_mean(np.stack([c[i] for c in clients]), fraction, axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_trimmed_mean_small_known_example() -> None:
    g = [np.zeros(3)]
    clients = [[np.array([1.0, 10.0, -5.0])], [np.array([2.0, 20.0, 0.0])], [np.array([3.0, 30.0, 5.0])],
               [np.array([4.0, 40.0, 10.0])], [np.array([1000.0, -1000.0, 15.0])]]
    agg = TrimmedMean(0.2)
    result = aggregate(agg, g, clients)
    np.testing.assert_allclose(result[0], [3.0, 20.0, 5.0])  # drop 1 max and 1 min per coordinate
    assert agg.report() == {"trimmed_per_side": 1}


@settings(max_examples=60, deadline=None)
@given(case=rounds(min_clients=4, max_clients=4), scale=st.floats(-1e6, 1e6))
def test_one_outlier_of_five_cannot_push_median_or_trimmed_mean_outside_the_honest_range(
        case: Case, scale: float) -> None:
    g, honest = case
    attacker = [np.full_like(w, scale) for w in honest[0]]
    clients = [*honest, attacker]
    for rule in (CoordinateMedian(), TrimmedMean(0.2)):
        for i, got in enumerate(aggregate(rule, g, clients)):
            stack = np.stack([c[i] for c in honest])
            assert np.all(got >= stack.min(axis=0) - 1e-9) and np.all(got <= stack.max(axis=0) + 1e-9)


@pytest.mark.parametrize("rule", [CoordinateMedian, TrimmedMean, MultiKrum])
def test_buffered_rules_say_they_need_every_update(rule: type[Aggregator]) -> None:
    assert rule.streaming is False
    assert FedAvg.streaming is True and GaussianDP.streaming is True


@pytest.mark.parametrize("rule", [CoordinateMedian, lambda: TrimmedMean(0.2), lambda: MultiKrum(0)])
def test_buffered_rules_check_updates_and_reset_on_begin(rule) -> None:
    agg = rule()
    agg.begin([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="bad.*shape"):
        agg.add(ClientResult("bad", 1, [np.zeros(3, np.float32)]))
    with pytest.raises(ValueError, match="bad.*tensors"):
        agg.add(ClientResult("bad", 1, []))
    with pytest.raises(ValueError, match="no update"):
        agg.result()
    agg.add(ClientResult("a", 1, [np.ones(2, np.float32)]))
    agg.begin([np.zeros(2, np.float32)])
    assert agg.count == 0


def test_results_keep_the_global_dtypes() -> None:
    g = [np.zeros(3, np.float32), np.zeros(2, np.float16)]
    clients = [[np.full(3, v, np.float32), np.full(2, v, np.float16)] for v in (1.0, 2.0, 3.0, 4.0, 5.0)]
    for rule in (CoordinateMedian(), TrimmedMean(0.2), MultiKrum(1)):
        result = aggregate(rule, g, clients)
        assert [r.dtype for r in result] == [np.float32, np.float16]
    for rule in (CoordinateMedian(), TrimmedMean(0.2)):
        np.testing.assert_array_equal(aggregate(rule, g, clients)[0], np.full(3, 3.0, np.float32))


# ---- Multi-Krum ------------------------------------------------------------------------------------------


def krum_reference(g: list[np.ndarray], clients: list[list[np.ndarray]], f: int,
                   m: int) -> tuple[np.ndarray, list[int]]:
    """Textbook Multi-Krum on flattened vectors with Python loops: (the average of the m chosen, their indices)."""
    flat = [np.concatenate([w.ravel() for w in c]) for c in clients]
    n = len(flat)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    return np.mean([flat[i] for i in chosen], axis=0), chosen


@settings(max_examples=60, deadline=None)
@given(case=rounds(min_clients=3, max_clients=9), data=st.data())
def test_multi_krum_equals_the_textbook_algorithm(case: Case, data: st.DataObject) -> None:
    g, clients = case
    n = len(clients)
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(0, n))
    agg = MultiKrum(f, m)
    result = aggregate(agg, g, clients)
    want, chosen = krum_reference(g, clients, f, m or n - f)
    ranked = np.sort(agg.scores())
    k = m or n - f
    if k == n or ranked[k] - ranked[k - 1] > 1e-6 * max(1.0, abs(ranked[k])):  # the cut is not a near-tie
        assert agg.report()["krum_selected"] == sorted(f"c{i}" for i in chosen)
        np.testing.assert_allclose(np.concatenate([r.ravel() for r in result]), want, rtol=1e-7, atol=1e-7)


def test_multi_krum_excludes_scaled_and_sign_flipped_updates() -> None:
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(20, 10)), rng.normal(size=10)]
    honest_delta = [rng.normal(0.0, 0.01, size=w.shape) + 0.05 for w in g]
    clients = [[w + d + rng.normal(0, 0.005, w.shape) for w, d in zip(g, honest_delta)] for _ in range(4)]
    for factor in (50.0, -1.0, -5.0):
        attacker = [w + factor * d for w, d in zip(g, honest_delta)]
        agg = MultiKrum(byzantine=1)
        result = aggregate(agg, g, [*clients, attacker])
        assert agg.report() == {"krum_selected": ["c0", "c1", "c2", "c3"], "krum_excluded": ["c4"]}
        for got, i in zip(result, range(2)):
            np.testing.assert_allclose(got, np.mean([c[i] for c in clients], axis=0))


def test_multi_krum_needs_2f_plus_3_updates() -> None:
    agg = MultiKrum(byzantine=2)
    with pytest.raises(ValueError, match="f = 2 needs at least 7 updates, got 6"):
        aggregate(agg, [np.zeros(2)], [[np.ones(2) * i] for i in range(6)])


# ---- clipping -------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(case=rounds(min_clients=1, max_clients=1), clip=st.floats(1e-3, 1e3))
def test_clipping_bounds_the_delta_norm_and_keeps_its_direction(case: Case, clip: float) -> None:
    g, (w,) = case
    clipped, norm, was_clipped = clip_to_norm(w, g, clip)
    assert norm == pytest.approx(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(w, g))))
    assert was_clipped == (norm > clip)
    if was_clipped:
        assert delta_norm(clipped, g) <= clip * (1 + 1e-9)
        scale = clip / norm
        for c, a, b in zip(clipped, w, g):
            np.testing.assert_allclose(c - b, (a - b) * scale, rtol=1e-7, atol=1e-9)
    else:
        assert all(c is a for c, a in zip(clipped, w)), "unclipped updates are passed on without a copy"


def test_clipping_wrapper_feeds_clipped_updates_to_the_rule_and_reports_them() -> None:
    g = [np.zeros(4, np.float32)]
    small = [np.array([0.1, 0.0, 0.0, 0.0], np.float32)]
    huge = [np.array([300.0, 400.0, 0.0, 0.0], np.float32)]   # norm 500
    agg = NormClipping(FedAvg(), clip_norm=5.0)
    assert agg.streaming
    result = aggregate(agg, g, [small, huge], examples=[1, 1])
    np.testing.assert_allclose(result[0], [(0.1 + 3.0) / 2, 2.0, 0.0, 0.0], rtol=1e-6)
    report = agg.report()
    assert report["clipped"] == ["c1"] and report["clip_norm"] == 5.0
    assert report["update_norm_max"] == pytest.approx(500.0) and report["update_norm_median"] == pytest.approx(250.05)
    assert NormClipping(TrimmedMean(), 1.0).streaming is False


def test_clipping_with_norm_zero_only_measures() -> None:
    agg = NormClipping(FedAvg(), 0.0)
    result = aggregate(agg, [np.zeros(2)], [[np.array([30.0, 40.0])]])
    np.testing.assert_array_equal(result[0], [30.0, 40.0])
    assert agg.report() == {"update_norm_median": 50.0, "update_norm_max": 50.0}


# ---- central differential privacy ----------------------------------------------------------------------------


def test_dp_noise_has_the_calibrated_std_on_the_mean() -> None:
    n, clip, z = 4, 2.0, 1.5
    g = [np.zeros(200_000, np.float32)]
    agg = GaussianDP(clip, z, rng=np.random.default_rng(1))
    result = aggregate(agg, g, [[np.zeros(200_000, np.float32)] for _ in range(n)])  # zero deltas: pure noise
    assert float(np.std(result[0])) == pytest.approx(z * clip / n, rel=0.01)
    assert abs(float(np.mean(result[0]))) < 0.01
    assert agg.report()["dp_noise_std"] == pytest.approx(z * clip / n)


def test_dp_clips_then_averages_without_weights() -> None:
    g = [np.zeros(2)]
    agg = GaussianDP(clip_norm=1.0, noise_multiplier=1e-9, rng=np.random.default_rng(0))
    result = aggregate(agg, g, [[np.array([30.0, 40.0])], [np.array([0.0, 0.5])]], examples=[1000, 1])
    np.testing.assert_allclose(result[0], [(0.6 + 0.0) / 2, (0.8 + 0.5) / 2], atol=1e-6)
    assert agg.report()["clipped"] == ["c0"]


def test_dp_epsilon_is_dp_accountings_and_grows_with_rounds() -> None:
    z, delta = 1.1, 1e-5
    agg = GaussianDP(1.0, z, delta, total_clients=100, rng=np.random.default_rng(0))
    epsilons = []
    for _ in range(3):
        aggregate(agg, [np.zeros(3)], [[np.ones(3)] for _ in range(10)])
        first = agg.result()
        np.testing.assert_array_equal(agg.result()[0], first[0])  # a second call adds no noise, spends nothing
        epsilons.append(agg.report()["dp_epsilon"])
    reference = rdp.RdpAccountant()
    reference.compose(dp_event.PoissonSampledDpEvent(0.1, dp_event.GaussianDpEvent(z)), 3)
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta), rel=1e-5)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert agg.report()["dp_sampling_rate"] == 0.1 and agg.report()["dp_rounds"] == 3


def test_dp_without_a_population_assumes_every_client_every_round() -> None:
    agg = GaussianDP(1.0, 2.0, 1e-5, rng=np.random.default_rng(0))
    aggregate(agg, [np.zeros(1)], [[np.ones(1)]] * 3)
    reference = rdp.RdpAccountant()
    reference.compose(dp_event.GaussianDpEvent(2.0))
    assert agg.report()["dp_sampling_rate"] == 1.0
    assert agg.report()["dp_epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-5)


@pytest.mark.parametrize("clip,z", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_dp_needs_positive_clip_and_noise(clip: float, z: float) -> None:
    with pytest.raises(ValueError, match="clip_norm > 0 and noise_multiplier > 0"):
        GaussianDP(clip, z)


# ---- make_aggregator from the settings -----------------------------------------------------------------------


def test_make_aggregator_builds_the_configured_rule_behind_clipping() -> None:
    agg = make_aggregator(AggregationSettings(rule="trimmed_mean", clip_norm=5.0, trim_fraction=0.3))
    assert isinstance(agg, NormClipping) and agg.clip_norm == 5.0
    assert isinstance(agg.inner, TrimmedMean) and agg.inner.trim_fraction == 0.3 and not agg.streaming
    krum = make_aggregator(AggregationSettings(rule="multi_krum", krum_byzantine=2, krum_select=3))
    assert isinstance(krum.inner, MultiKrum) and (krum.inner.byzantine, krum.inner.select) == (2, 3)
    assert isinstance(make_aggregator(AggregationSettings()).inner, FedAvg)
    assert isinstance(make_aggregator(AggregationSettings(rule="median")).inner, CoordinateMedian)
    dp = make_aggregator(AggregationSettings(clip_norm=1.0, dp_noise_multiplier=0.8, dp_total_clients=50))
    assert isinstance(dp, GaussianDP) and dp.total_clients == 50
    assert set(AGGREGATORS) == {"fedavg", "median", "trimmed_mean", "multi_krum"}


def test_make_aggregator_refuses_dp_without_clipping() -> None:
    with pytest.raises(ValueError, match="clip_norm > 0"):
        make_aggregator(AggregationSettings(dp_noise_multiplier=1.0))


def test_dp_resumed_run_keeps_counting_the_privacy_spent() -> None:
    first = GaussianDP(1.0, 1.3, 1e-5, total_clients=20, rng=np.random.default_rng(0))
    reports = []
    for _ in range(2):
        aggregate(first, [np.zeros(2)], [[np.ones(2)]] * 5)
        reports.append(first.report())
    resumed = GaussianDP(1.0, 1.3, 1e-5, total_clients=20, rng=np.random.default_rng(1))
    resumed.resume([{"clipped": []}, *reports])  # rounds without DP reports add nothing
    aggregate(resumed, [np.zeros(2)], [[np.ones(2)]] * 5)
    aggregate(first, [np.zeros(2)], [[np.ones(2)]] * 5)
    assert resumed.report()["dp_rounds"] == 3
    assert resumed.report()["dp_epsilon"] == pytest.approx(first.report()["dp_epsilon"])
