"""Tests for edge_client.update_encoding (error feedback and its residual file) and for the coordinator's streaming
aggregation of delta updates (coordinator.aggregation with deltas, top-k ones added sparsely)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregation import ClientResult, FedAvg, GaussianDP, NormClipping, make_aggregator
from coordinator.aggregation.deltas import dense_weights
from edge_client.update_encoding import RESIDUAL_FILE, ResidualStore, UpdateEncoder
from federation.protocol.codec import pack, unpack
from federation.protocol.encodings import Encoded, EncodingPlan, SparseDelta, decode_wire_tensors, wire_maps

NAMES = ["kernel", "bias", "steps"]


def _model(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(20, 10)).astype(np.float32), rng.normal(size=10).astype(np.float32),
            np.array([7], dtype=np.int64)]


def _sent_dense(tensors: list[tuple[str, object]]) -> list[np.ndarray]:
    """What the coordinator decodes from an update's tensors, as dense arrays (deltas; raw ones as they are)."""
    decoded = decode_wire_tensors(unpack(pack({"t": wire_maps(tensors)}))["t"])
    out = []
    for _, t in decoded:
        value = t.value if isinstance(t, Encoded) else t
        out.append(value.dense() if isinstance(value, SparseDelta) else np.asarray(value))
    return out


@pytest.mark.parametrize("plan", [EncodingPlan("topk", topk_fraction=0.05, topk_values="float32"),
                                  EncodingPlan("topk", topk_fraction=0.01, topk_values="int8", int8_block=4),
                                  EncodingPlan("int8", int8_block=16), EncodingPlan("float16")])
def test_error_feedback_what_was_sent_plus_the_residual_is_every_true_delta(plan: EncodingPlan,
                                                                            tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = ResidualStore(tmp_path)
    encoder = UpdateEncoder(store)
    global_weights = _model(rng)
    true_sum = [np.zeros_like(w, dtype=np.float64) for w in global_weights[:2]]
    sent_sum = [np.zeros_like(w, dtype=np.float64) for w in global_weights[:2]]
    for round_ in range(1, 9):
        trained = [w + rng.normal(scale=0.01, size=w.shape).astype(np.float32) if w.dtype.kind == "f" else w + 1
                   for w in global_weights]
        tensors = encoder.encode("run", round_, f"{round_:064x}", NAMES, global_weights, trained, plan)
        assert isinstance(tensors[2][1], np.ndarray) and tensors[2][1][0] == trained[2][0], "integers go raw, whole"
        sent = _sent_dense(tensors)
        for i in range(2):
            true_sum[i] += trained[i].astype(np.float64) - global_weights[i]
            sent_sum[i] += sent[i]
        global_weights = [w.copy() for w in trained]   # the next round's model
    residual = store.load().after
    for i, name in enumerate(NAMES[:2]):
        np.testing.assert_allclose(sent_sum[i] + residual[name], true_sum[i], rtol=0, atol=2e-6)
    if plan.uplink == "topk":
        assert np.abs(residual["kernel"]).sum() > 0, "top-k leaves most of the delta behind"


def test_the_residual_survives_a_restart_and_a_retrained_round_starts_from_the_same_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    plan = EncodingPlan("topk", topk_fraction=0.1, topk_values="float32")
    global_weights = _model(rng)
    trained = [w + 0.5 if w.dtype.kind == "f" else w for w in global_weights]
    UpdateEncoder(ResidualStore(tmp_path)).encode("run", 1, "a" * 64, NAMES, global_weights, trained, plan)
    first = ResidualStore(tmp_path).load()
    assert (tmp_path / RESIDUAL_FILE).is_file() and not list(tmp_path.glob("*.tmp")), "renamed into place"
    assert first.round == 1 and first.run == "run" and np.abs(first.after["kernel"]).sum() > 0

    # a new process (new store, new encoder) trains round 2: it starts from the residual on disk
    restarted = UpdateEncoder(ResidualStore(tmp_path))
    tensors = restarted.encode("run", 2, "b" * 64, NAMES, global_weights, global_weights, plan)
    sent = _sent_dense(tensors)
    np.testing.assert_allclose(sent[0] + ResidualStore(tmp_path).load().after["kernel"], first.after["kernel"],
                               atol=1e-7)

    # round 2 again with the same model (a restart before the update went out): it starts from round 2's start
    again = UpdateEncoder(ResidualStore(tmp_path)).encode("run", 2, "b" * 64, NAMES, global_weights,
                                                          global_weights, plan)
    np.testing.assert_array_equal(_sent_dense(again)[0], sent[0])

    # another run starts from zero
    other = UpdateEncoder(ResidualStore(tmp_path)).encode("other", 1, "c" * 64, NAMES, global_weights,
                                                          global_weights, plan)
    assert not _sent_dense(other)[0].any()


def test_a_damaged_residual_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / RESIDUAL_FILE).write_bytes(b"\x93garbage")
    assert ResidualStore(tmp_path).load().after == {}
    assert "ignoring the residual file" in caplog.text


# ---- the coordinator: delta updates into the rules ----------------------------------------------------------


def _results(rng: np.random.Generator, base: list[np.ndarray], plan: EncodingPlan, n: int = 4) \
        -> tuple[list[ClientResult], list[ClientResult]]:
    """n updates as decoded delta results and as the whole weights they stand for."""
    deltas, wholes = [], []
    for c in range(n):
        trained = [w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) if w.dtype.kind == "f" else w + c
                   for w in base]
        tensors = UpdateEncoder(ResidualStore(None)).encode("r", 1, "a" * 64, NAMES, base, trained, plan)
        decoded = decode_wire_tensors(unpack(pack({"t": wire_maps(tensors)}))["t"])
        values = [t.value if isinstance(t, Encoded) else t for _, t in decoded]
        deltas.append(ClientResult(f"c{c}", 10 + c, deltas=values))
        wholes.append(ClientResult(f"c{c}", 10 + c, dense_weights(values, base)))
    return deltas, wholes


class _NoDense(SparseDelta):
    def dense(self, dtype: object = np.float32) -> np.ndarray:
        raise AssertionError("a streaming rule built a dense copy of a top-k update")


@pytest.mark.parametrize("rule", ["fedavg", "median", "trimmed_mean", "multi_krum"])
def test_delta_updates_aggregate_as_the_weights_they_stand_for(rule: str) -> None:
    rng = np.random.default_rng(3)
    base = _model(rng)
    deltas, wholes = _results(rng, base, EncodingPlan("topk", topk_fraction=0.2, topk_values="float32"), n=5)
    if rule == "fedavg":   # streaming: top-k deltas are added without ever being densified
        deltas = [ClientResult(r.client_id, r.num_examples, deltas=[
            _NoDense(d.shape, d.indices, d.values) if isinstance(d, SparseDelta) else d for d in r.deltas or []])
            for r in deltas]
    outs = []
    for results in (deltas, wholes):
        agg = make_aggregator(rule)
        agg.begin(base)
        for r in results:
            agg.add(r)
        outs.append(agg.result())
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert a.dtype == b.dtype


def test_fedavg_mixes_whole_and_delta_updates() -> None:
    rng = np.random.default_rng(4)
    base = _model(rng)
    deltas, wholes = _results(rng, base, EncodingPlan("int8"), n=4)
    mixed, reference = FedAvg(), FedAvg()
    for agg, results in ((mixed, deltas[:2] + wholes[2:]), (reference, wholes)):
        agg.begin(base)
        for r in results:
            agg.add(r)
    for a, b in zip(mixed.result(), reference.result()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_clipping_and_dp_scale_a_sparse_delta_as_its_dense_form() -> None:
    rng = np.random.default_rng(5)
    base = _model(rng)
    deltas, wholes = _results(rng, base, EncodingPlan("topk", topk_fraction=0.3, topk_values="float32"), n=3)
    for make in (lambda: NormClipping(FedAvg(), 0.05),
                 lambda: GaussianDP(0.05, 1.0, rng=np.random.default_rng(9))):
        outs, reports = [], []
        for results in (deltas, wholes):
            agg = make()
            agg.begin(base)
            for r in results:
                agg.add(r)
            outs.append(agg.result())
            reports.append(agg.report())
        for a, b in zip(*outs):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert reports[0]["clipped"] == reports[1]["clipped"] == ["c0", "c1", "c2"]
