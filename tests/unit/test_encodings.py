"""Tests for federation.protocol.encodings: float16, int8 and top-k round trips over shapes and dtypes (property
tests), the exact byte sizes, the plan's rules, and hostile encoded payloads refused with reasons."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.codec import DecodeError, pack, unpack
from federation.protocol.encodings import (
    Encoded, EncodingPlan, SparseDelta, check_update_encoding, decode_model_tensors, decode_wire_tensors,
    encode_float16, encode_int8, encode_model, encode_topk, int8_block_for, pack_indices, topk_count,
    unpack_indices, wire_maps,
)
from federation.protocol.messages import GlobalModel, ModelInfo, TrainingPlan, Update, decode_message

FLOAT_DTYPES = st.sampled_from(["float16", "float32", "float64"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=7)


def arrays(dtype: str = "float32", shape: Any = SHAPES, bound: float = 1000.0) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype=dtype, shape=shape,
                      elements=st.floats(-bound, bound, allow_nan=False, width=np.dtype(dtype).itemsize * 8))


def over_the_wire(tensor: Any, allow_topk: bool = True) -> Any:
    """Pack one tensor as a message would, unpack it, decode it."""
    payload = pack({"tensors": wire_maps([("t", tensor)])})
    [(name, decoded)] = decode_wire_tensors(unpack(payload)["tensors"], allow_topk)
    assert name == "t"
    return decoded


# ---- round trips ----------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(dtype=FLOAT_DTYPES, data=st.data())
def test_float16_round_trip_is_ieee_half_rounding(dtype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(dtype, bound=60000.0))
    decoded = over_the_wire(encode_float16(array))
    assert isinstance(decoded, Encoded) and decoded.encoding == "float16"
    assert decoded.value.dtype == array.dtype and decoded.value.shape == array.shape
    np.testing.assert_array_equal(decoded.value, array.astype(np.float16).astype(array.dtype))


@settings(max_examples=150, deadline=None)
@given(dtype=FLOAT_DTYPES, block=st.sampled_from([1, 2, 3, 4, 7, 256]), data=st.data())
def test_int8_round_trip_is_within_half_a_step_of_each_block(dtype: str, block: int, data: st.DataObject) -> None:
    bound = 60000.0 if dtype == "float16" else 1e6
    array = data.draw(arrays(dtype, bound=bound))
    encoded = encode_int8(array, block)
    decoded = over_the_wire(encoded)
    assert decoded.encoding == "int8" and decoded.value.dtype == array.dtype and decoded.value.shape == array.shape
    used = int8_block_for(array.size, block)
    assert encoded.wire["block"] == used and array.size % used == 0
    blocks = array.astype(np.float64).reshape(-1, used)
    width = np.maximum(blocks.max(axis=1), 0) - np.minimum(blocks.min(axis=1), 0)
    step = width / 255       # 0 where the width is a float64 subnormal: the division underflows (5e-324 / 255)
    scale = np.frombuffer(encoded.wire["scale"], "<f4").astype(np.float64)
    spans = width > 0
    # The scale on the wire is the smallest float32 at or above the exact step (a subnormal's spacing is coarse).
    assert (scale[spans] >= step[spans]).all()
    assert (scale[spans] <= np.nextafter(step[spans].astype(np.float32), np.float32(np.inf)).astype(np.float64)
            + float(np.finfo(np.float32).smallest_subnormal)).all()
    error = np.abs(decoded.value.astype(np.float64).reshape(-1, used) - blocks)
    rounding = np.abs(blocks) * float(np.finfo(array.dtype).eps) * 2   # the cast back to the tensor's dtype
    assert (error <= np.where(spans, scale, 0)[:, None] * 0.5 * (1 + 1e-5) + rounding).all()
    np.testing.assert_array_equal(decoded.value, encoded.value)   # the device knows exactly what it sent
    zeros = array == 0
    assert (decoded.value[zeros] == 0).all(), "zero is exact: the range of every block holds it"


@settings(max_examples=150, deadline=None)
@given(fraction=st.floats(0.001, 1.0), values=st.sampled_from(["float32", "float16", "int8"]), data=st.data())
def test_topk_keeps_the_largest_magnitudes(fraction: float, values: str, data: st.DataObject) -> None:
    array = data.draw(arrays("float32"))
    encoded = encode_topk(array, fraction, values, int8_block=4)
    decoded = over_the_wire(encoded)
    assert isinstance(decoded.value, SparseDelta) and decoded.values_encoding == values
    sparse = decoded.value
    k = topk_count(array.size, fraction)
    assert len(sparse.indices) == k == encoded.wire["count"]
    assert (np.diff(sparse.indices) > 0).all()
    flat = np.abs(array.ravel())
    rest = np.delete(flat, sparse.indices)
    assert rest.size == 0 or flat[sparse.indices].min() >= rest.max()
    np.testing.assert_array_equal(sparse.values, encoded.value.values)
    if values == "float32":
        np.testing.assert_array_equal(sparse.values, array.ravel()[sparse.indices])
        np.testing.assert_array_equal(sparse.dense() + np.where(
            np.isin(np.arange(array.size), sparse.indices), 0, array.ravel()).reshape(array.shape), array)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 2 ** 31), min_size=1, max_size=200))
def test_index_gaps_pack_to_the_bits_of_the_largest_gap(indices: set[int]) -> None:
    idx = np.array(sorted(indices), dtype=np.int64)
    bits, packed = pack_indices(idx)
    gaps = np.diff(idx, prepend=0)
    assert bits == max(1, int(gaps.max()).bit_length())
    assert len(packed) == math.ceil(len(idx) * bits / 8)
    np.testing.assert_array_equal(unpack_indices(packed, len(idx), bits), idx)


def test_sizes_near_the_minimum_for_the_reference_dense_kernel() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1600, 128)).astype(np.float32)
    dense = 4 * kernel.size
    assert len(encode_float16(kernel).wire["data"]) == dense // 2
    i8 = encode_int8(kernel, 256).wire
    assert len(i8["data"]) + len(i8["scale"]) + len(i8["zero_point"]) == kernel.size * (1 + 5 / 256)
    top = encode_topk(kernel, 0.01, "float16").wire
    k = top["count"]
    assert k == 2048
    # gaps of about 100: 8 to 12 bits; the information-theoretic floor log2(C(n, k)) / k is about 8.1 bits
    assert 8 <= top["index_bits"] <= 12
    assert (len(top["indices"]) + len(top["values"]["data"])) / dense < 0.01 * (2 + 12 / 8) / 4 + 1e-9


def test_model_downlink_float16_loads_what_was_sent() -> None:
    weights = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.arange(3, dtype=np.int32)]
    wire, loaded = encode_model(weights, "float16")
    assert isinstance(wire[0], Encoded) and wire[1] is weights[1]
    message = GlobalModel(run="r", round=1, sender="coordinator", model=ModelInfo("m", (2,), 2),
                          train=TrainingPlan(1, 1, 0.1, encoding=EncodingPlan(downlink="float16")),
                          tensors=[("a", weights[0]), ("b", weights[1])])
    decoded = decode_message(message.encode())
    assert isinstance(decoded, GlobalModel) and decoded.train.encoding.downlink == "float16"
    np.testing.assert_array_equal(decoded.tensors[0][1], loaded[0])
    assert decoded.tensors[0][1].dtype == np.float32
    np.testing.assert_array_equal(decoded.tensors[1][1], weights[1])


def test_plan_round_trips_and_is_absent_when_default() -> None:
    plan = EncodingPlan("topk", "float16", 0.05, "int8", 64)
    assert EncodingPlan.from_wire(plan.to_wire()) == plan
    assert "encoding" not in TrainingPlan(1, 1, 0.1).to_wire()
    assert TrainingPlan.from_wire(TrainingPlan(1, 1, 0.1, encoding=plan).to_wire()).encoding == plan


@pytest.mark.parametrize("raw, text", [
    ({"uplink": "int4"}, "uplink"), ({"downlink": "int8"}, "downlink"), ({"topk_fraction": 0}, "topk_fraction"),
    ({"topk_fraction": float("nan")}, "topk_fraction"), ({"int8_block": 0}, "int8_block"),
    ({"int8_block": 2.0}, "int8_block"), ([], "map"),
])
def test_bad_plans_are_refused(raw: Any, text: str) -> None:
    with pytest.raises(DecodeError, match=text):
        EncodingPlan.from_wire(raw)


# ---- the plan's rules -----------------------------------------------------------------------------------------


DIGEST = "ab" * 32


def _update(tensors: list[tuple[str, Any]], base: str = DIGEST) -> Update:
    return Update(run="r", round=1, sender="d", num_examples=5, tensors=tensors, base_sha256=base)


def _decoded(update: Update) -> Update:
    message = decode_message(update.encode())
    assert isinstance(message, Update)
    return message


def test_an_update_in_the_plans_encoding_passes() -> None:
    delta = np.ones((4, 4), dtype=np.float32)
    steps = np.array(3, dtype=np.int64)
    update = _decoded(_update([("w", encode_topk(delta, 0.25, "int8")), ("steps", steps)]))
    check_update_encoding(update.tensors, update.base_sha256, EncodingPlan("topk", topk_values="int8"), DIGEST)
    raw = _decoded(_update([("w", delta), ("steps", steps)], base=""))
    check_update_encoding(raw.tensors, raw.base_sha256, EncodingPlan(), DIGEST)


@pytest.mark.parametrize("tensor, base, plan, text", [
    ("int8", DIGEST, EncodingPlan("float16"), "encoded as int8; the run's uplink encoding is float16"),
    ("raw", DIGEST, EncodingPlan("int8"), "encoded as float32; the run's uplink encoding is int8"),
    ("topk16", DIGEST, EncodingPlan("topk", topk_values="int8"), "topk with float16 values"),
    ("int8", "", EncodingPlan("int8"), "base_sha256 is None"),
    ("int8", "cd" * 32, EncodingPlan("int8"), "deltas against the round's model"),
    ("raw", DIGEST, EncodingPlan(), "sends deltas"),
    ("float16", "", EncodingPlan(), "encoded as float16; the run's uplink encoding is float32"),
])
def test_an_update_in_another_encoding_is_refused_with_the_reason(tensor: str, base: str, plan: EncodingPlan,
                                                                   text: str) -> None:
    delta = np.linspace(-1, 1, 16, dtype=np.float32)
    made = {"int8": encode_int8(delta, 4), "raw": delta, "topk16": encode_topk(delta, 0.5, "float16"),
            "float16": encode_float16(delta)}[tensor]
    update = _decoded(_update([("w", made)], base))
    with pytest.raises(DecodeError, match=text) as info:
        check_update_encoding(update.tensors, update.base_sha256, plan, DIGEST)
    assert info.value.reason == "wrong_encoding"


# ---- hostile payloads -----------------------------------------------------------------------------------------


def _topk_map(values: str = "float16") -> dict[str, Any]:
    delta = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    return {"name": "w", **encode_topk(delta, 0.05, values, int8_block=5).wire}


def _int8_map() -> dict[str, Any]:
    return {"name": "w", **encode_int8(np.linspace(-1, 1, 32, dtype=np.float32), 8).wire}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _gaps_bytes(gaps: list[int], bits: int) -> bytes:
    matrix = ((np.array(gaps)[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(matrix.reshape(-1), bitorder="little").tobytes()


def _hostile() -> list[tuple[str, dict[str, Any], str, str]]:
    topk, i8 = _topk_map(), _int8_map()
    f16 = {"name": "w", **encode_float16(np.ones(4, dtype=np.float32)).wire}
    k = topk["count"]
    return [
        ("index out of range", _with(topk, indices=_gaps_bytes([99, 1, 1, 1, 1], 7), index_bits=7),
         "out of range", "malformed"),
        ("duplicate indices", _with(topk, indices=_gaps_bytes([90, 1, 0, 1, 1], 7), index_bits=7),
         "duplicate", "malformed"),
        ("count that does not match the values", _with(topk, count=k - 1), "bytes", "malformed"),
        ("count that does not match the values (indices fit)", _with(
            topk, count=k + 1, indices=_gaps_bytes([90, 1, 1, 1, 1, 1], 7), index_bits=7),
         "does not match count", "malformed"),
        ("count beyond the tensor", _with(topk, count=101), "count 101", "malformed"),
        ("count of 0", _with(topk, count=0), "count 0", "malformed"),
        ("index bits 0", _with(topk, index_bits=0), "index_bits", "malformed"),
        ("index bits 64", _with(topk, index_bits=64), "index_bits", "malformed"),
        ("short index bytes", _with(topk, indices=topk["indices"][:-1]), "indices holds", "malformed"),
        ("values not a map", _with(topk, values=b"x"), "values", "malformed"),
        ("values nested top-k", _with(topk, values={**topk["values"], "encoding": "topk"}), "encoding",
         "wrong_encoding"),
        ("a scale of 0", _with(i8, scale=np.zeros(4, "<f4").tobytes()), "scale", "not_finite"),
        ("a negative scale", _with(i8, scale=np.full(4, -1, "<f4").tobytes()), "scale", "not_finite"),
        ("a NaN scale", _with(i8, scale=np.full(4, np.nan, "<f4").tobytes()), "scale", "not_finite"),
        ("an Inf scale", _with(i8, scale=np.full(4, np.inf, "<f4").tobytes()), "scale", "not_finite"),
        ("a scale that overflows", _with(i8, scale=np.full(4, 3e38, "<f4").tobytes()), "NaN or Inf", "not_finite"),
        ("a block size that does not divide", _with(i8, block=5), "does not divide", "malformed"),
        ("a block size of 0", _with(i8, block=0), "does not divide", "malformed"),
        ("scales for other blocks", _with(i8, scale=i8["scale"][:-4]), "scale holds", "malformed"),
        ("zero points missing", _with(i8, zero_point=None), "lacks zero_point", "malformed"),
        ("int8 data of another length", _with(i8, data=i8["data"] + b"\0"), "data holds", "malformed"),
        ("float16 NaN", _with(f16, data=np.full(4, np.nan, "<f2").tobytes()), "NaN or Inf", "not_finite"),
        ("float16 Inf", _with(f16, data=np.full(4, np.inf, "<f2").tobytes()), "NaN or Inf", "not_finite"),
        ("top-k values NaN", _with(topk, values={**topk["values"], "data": np.full(k, np.nan, "<f2").tobytes()}),
         "NaN or Inf", "not_finite"),
        ("unknown encoding", _with(f16, encoding="bfloat16"), "unknown encoding", "wrong_encoding"),
        ("an encoded integer tensor", _with(f16, dtype="int32"), "float type", "malformed"),
        ("an empty encoded tensor", _with(f16, shape=[0]), "at least one element", "malformed"),
        ("absurd shape", _with(f16, shape=[2 ** 30, 2 ** 30]), "absurdly large", "too_large"),
        ("block not an int", _with(i8, block=8.0), "block is float", "malformed"),
    ]


@pytest.mark.parametrize("label, item, text, reason", _hostile(), ids=[h[0] for h in _hostile()])
def test_hostile_encoded_tensors_are_refused_with_reasons(label: str, item: dict[str, Any], text: str,
                                                          reason: str) -> None:
    with pytest.raises(DecodeError, match=text) as info:
        decode_wire_tensors(unpack(pack({"t": [item]}))["t"])
    assert info.value.reason == reason
    # the same tensor inside a whole update message: refused the same way, never another exception
    payload = pack({"version": 1, "type": "update", "run": "r", "round": 1, "sender": "d", "sent_at": 0.0,
                    "num_examples": 1, "metrics": {}, "tensors": [item], "base_sha256": DIGEST})
    with pytest.raises(DecodeError, match=text):
        decode_message(payload)


def test_topk_is_refused_in_a_global_model() -> None:
    with pytest.raises(DecodeError, match="updates only"):
        decode_model_tensors([_topk_map()])


def test_a_base_sha256_that_is_not_a_digest_is_refused() -> None:
    payload = pack({"version": 1, "type": "update", "run": "r", "round": 1, "sender": "d", "sent_at": 0.0,
                    "num_examples": 1, "metrics": {}, "tensors": [], "base_sha256": "nope"})
    with pytest.raises(DecodeError, match="base_sha256"):
        decode_message(payload)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_encoded_tensors_raise_only_decode_error(data: st.DataObject) -> None:
    item = dict(data.draw(st.sampled_from([_topk_map("float16"), _topk_map("int8"), _int8_map()])))
    key = data.draw(st.sampled_from(sorted(item)))
    item[key] = data.draw(st.one_of(st.none(), st.integers(-2 ** 40, 2 ** 40), st.binary(max_size=40),
                                    st.text(max_size=5), st.lists(st.integers(0, 5), max_size=3),
                                    st.floats(allow_nan=True)))
    try:
        decode_wire_tensors([item])
    except DecodeError:
        pass


def test_int8_of_a_subnormal_range_still_spans_the_block() -> None:
    """Found by the property test above: float32 rounded the scale of a 5e-42 range down, so 255 steps fell short of
    the block's maximum, which was then clipped by 3% of its value (far more than half a step)."""
    array = np.array([5.13e-42], dtype=np.float32)
    decoded = over_the_wire(encode_int8(array, 1)).value
    scale = float(np.frombuffer(encode_int8(array, 1).wire["scale"], "<f4")[0])
    assert scale * 255 >= float(array[0])
    assert abs(float(decoded[0]) - float(array[0])) <= scale / 2 + float(np.finfo(np.float32).smallest_subnormal)


def test_int8_of_a_float64_range_too_small_to_divide_gets_a_positive_scale() -> None:
    """(hi - lo) / 255 underflows to 0 for a float64 subnormal range: the scale on the wire must still be > 0 (a
    receiver refuses 0), and the block decodes within half a step (hypothesis found 5e-324)."""
    array = np.array([5e-324])
    encoded = encode_int8(array, 1)
    scale = np.frombuffer(encoded.wire["scale"], "<f4")
    assert scale[0] > 0
    decoded = over_the_wire(encoded)
    assert abs(float(decoded.value[0]) - 5e-324) <= float(scale[0]) / 2
