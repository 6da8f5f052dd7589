"""Tests for coordinator.aggregation: streaming FedAvg equals the weighted mean, and keeps the Aggregator contract."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import AGGREGATORS, Aggregator, ClientResult, FedAvg, make_aggregator


def reference(clients: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    """sum(n_i * w_i) / sum(n_i), in float64."""
    total = sum(n for n, _ in clients)
    num_tensors = len(clients[0][1])
    return [sum(n * w[i].astype(np.float64) for n, w in clients) / total for i in range(num_tensors)]


def run_fedavg(global_weights: list[np.ndarray], clients: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    agg = FedAvg()
    agg.begin(global_weights)
    for i, (n, weights) in enumerate(clients):
        agg.add(ClientResult(f"client-{i}", n, weights))
    assert agg.count == len(clients)
    return agg.result()


@st.composite
def rounds(draw: st.DrawFn, dtypes: tuple[str, ...] = ("float32", "float64")) -> tuple[
        list[np.ndarray], list[tuple[int, list[np.ndarray]]]]:
    """Global weights plus 1..8 clients, each with an example count and one array per global tensor."""
    specs = draw(st.lists(st.tuples(st.sampled_from(dtypes),
                                    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
                          min_size=1, max_size=4))
    global_weights = [np.zeros(shape, dtype) for dtype, shape in specs]
    clients = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        n = draw(st.integers(min_value=1, max_value=10**6))
        weights = [draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=np.dtype(dtype).itemsize * 8)))
                   for dtype, shape in specs]
        clients.append((n, weights))
    return global_weights, clients


@settings(max_examples=150, deadline=None)
@given(case=rounds())
def test_fedavg_equals_the_weighted_mean(case: tuple[list[np.ndarray], list[tuple[int, list[np.ndarray]]]]) -> None:
    global_weights, clients = case
    result = run_fedavg(global_weights, clients)
    expected = reference(clients)
    assert len(result) == len(global_weights)
    for got, want, g in zip(result, expected, global_weights):
        assert got.dtype == g.dtype
        assert got.shape == g.shape
        assert np.allclose(got, want, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(case=rounds(), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_fedavg_does_not_depend_on_the_order_of_updates(
        case: tuple[list[np.ndarray], list[tuple[int, list[np.ndarray]]]], seed: int) -> None:
    global_weights, clients = case
    shuffled = [clients[i] for i in np.random.default_rng(seed).permutation(len(clients))]
    for a, b in zip(run_fedavg(global_weights, clients), run_fedavg(global_weights, shuffled)):
        assert np.allclose(a, b, rtol=1e-6)


def test_fedavg_small_known_example() -> None:
    w1 = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    w2 = [np.array([3.0, 6.0], np.float32), np.array([[4.0]], np.float32)]
    result = run_fedavg([np.zeros(2, np.float32), np.zeros((1, 1), np.float32)], [(1, w1), (3, w2)])
    assert np.array_equal(result[0], np.array([2.5, 5.0], np.float32))
    assert np.array_equal(result[1], np.array([[3.0]], np.float32))


def test_single_client_result_is_its_weights() -> None:
    w = [np.array([0.1, -7.25, 1e-3], np.float32)]
    result = run_fedavg([np.zeros(3, np.float32)], [(17, w)])
    assert np.array_equal(result[0], w[0])
    assert result[0] is not w[0]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64", "uint8"])
def test_result_dtypes_equal_the_global_dtypes(dtype: str) -> None:
    g = [np.zeros((2, 2), dtype), np.zeros((3,), np.float32)]
    clients = [(2, [np.full((2, 2), 4, dtype), np.ones(3, np.float32)]),
               (2, [np.full((2, 2), 8, dtype), np.ones(3, np.float32)])]
    result = run_fedavg(g, clients)
    assert [r.dtype for r in result] == [np.dtype(dtype), np.dtype(np.float32)]
    if np.dtype(dtype).kind == "f":
        assert np.array_equal(result[0], np.full((2, 2), 6, dtype))
    else:  # a counter or a state (a Normalization layer's int64 count): the global value, not an average
        assert np.array_equal(result[0], g[0])


@pytest.mark.parametrize("rule", ["fedavg", "median", "trimmed_mean", "multi_krum"])
def test_every_rule_averages_float_state_and_keeps_non_float_tensors_global(rule: str) -> None:
    """BatchNormalization's moving statistics are float weights: averaged like any other. An int64 count is not."""
    from coordinator.aggregation import make_aggregator

    g = [np.zeros(2, np.float32), np.array(7, np.int64)]
    agg = make_aggregator(rule)
    agg.begin(g)
    for k in range(5):
        agg.add(ClientResult(f"c{k}", 10, [np.full(2, 1.0, np.float32), np.array(100 + k, np.int64)]))
    moving_mean, count = agg.result()
    assert np.allclose(moving_mean, 1.0) and count.dtype == np.int64 and int(count) == 7


def test_accumulates_in_float64_so_float16_does_not_overflow() -> None:
    big = np.array([60000.0], np.float16)  # n * w overflows float16, not float64
    result = run_fedavg([np.zeros(1, np.float16)], [(1000, [big]), (1000, [big])])
    assert result[0].dtype == np.float16
    assert np.isfinite(result[0]).all() and result[0][0] == big[0]


def test_begin_resets_the_round() -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32)])
    agg.add(ClientResult("a", 5, [np.array([100.0, 100.0], np.float32)]))
    agg.begin([np.zeros(2, np.float32)])
    assert agg.count == 0
    with pytest.raises(ValueError):
        agg.result()
    agg.add(ClientResult("b", 1, [np.array([1.0, 2.0], np.float32)]))
    assert np.array_equal(agg.result()[0], np.array([1.0, 2.0], np.float32))
    assert agg.count == 1


def test_begin_with_new_shapes_replaces_the_old_ones() -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32)])
    agg.begin([np.zeros((3, 1), np.float64), np.zeros((), np.float64)])
    agg.add(ClientResult("a", 2, [np.ones((3, 1)), np.array(5.0)]))
    result = agg.result()
    assert [r.shape for r in result] == [(3, 1), ()]


def test_result_without_updates_raises() -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="no update"):
        agg.result()
    with pytest.raises(ValueError):
        FedAvg().result()


def test_wrong_shape_raises_naming_the_client_and_changes_nothing() -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32), np.zeros((2, 2), np.float32)])
    agg.add(ClientResult("good", 1, [np.ones(2, np.float32), np.ones((2, 2), np.float32)]))
    with pytest.raises(ValueError, match="bad-client.*shape"):
        # first tensor fine, second wrong: nothing of it may be accumulated
        agg.add(ClientResult("bad-client", 1, [np.full(2, 99, np.float32), np.ones((2, 3), np.float32)]))
    assert agg.count == 1
    assert np.array_equal(agg.result()[0], np.ones(2, np.float32))


@pytest.mark.parametrize("weights", [[np.zeros(2, np.float32)],
                                     [np.zeros(2, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)],
                                     []])
def test_wrong_tensor_count_raises_naming_the_client(weights: list[np.ndarray]) -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32), np.zeros(1, np.float32)])
    with pytest.raises(ValueError, match="client-x.*tensors"):
        agg.add(ClientResult("client-x", 3, weights))
    assert agg.count == 0


@pytest.mark.parametrize("n", [0, -1, -(10**6)])
def test_non_positive_num_examples_raises(n: int) -> None:
    agg = FedAvg()
    agg.begin([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="client-n.*num_examples"):
        agg.add(ClientResult("client-n", n, [np.ones(2, np.float32)]))
    assert agg.count == 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_add_keeps_no_reference_to_the_update_arrays(dtype: str) -> None:
    """The streaming contract (base.Aggregator): the caller may reuse or free the arrays after add()."""
    agg = FedAvg()
    assert agg.streaming
    agg.begin([np.zeros((2, 2), dtype)])
    first = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    second = np.array([[5.0, 6.0], [7.0, 8.0]], dtype)
    agg.add(ClientResult("a", 1, [first]))
    first[...] = 1e6   # mutate after add: must not leak into the sum
    agg.add(ClientResult("b", 1, [second]))
    second[...] = -1e6
    result = agg.result()
    assert np.array_equal(result[0], np.array([[3.0, 4.0], [5.0, 6.0]], dtype))
    assert not np.shares_memory(result[0], first) and not np.shares_memory(result[0], second)


def test_result_does_not_alias_global_weights_or_internal_state() -> None:
    g = [np.zeros(3, np.float64)]
    agg = FedAvg()
    agg.begin(g)
    agg.add(ClientResult("a", 2, [np.ones(3)]))
    r1 = agg.result()
    r1[0][...] = 42.0
    assert np.array_equal(agg.result()[0], np.ones(3))
    assert np.array_equal(g[0], np.zeros(3))


def test_make_aggregator() -> None:
    agg = make_aggregator("fedavg")
    assert isinstance(agg, FedAvg) and isinstance(agg, Aggregator)
    assert make_aggregator("fedavg") is not agg
    assert set(AGGREGATORS) >= {"fedavg"}
    with pytest.raises(ValueError, match="'nope'.*fedavg"):
        make_aggregator("nope")
