"""Hostile payloads against the decoder: container bombs are refused fast and within memory, legitimate messages still
decode under the tightest limits, and no error text grows with the payload (issue 10, items 2 and 6)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import hypothesis.extra.numpy as hnp
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.chunked_transfer import ChunkedReceiver, outgoing_messages
from federation.protocol.byte_chunks import ChunkError, ChunkManifest, split
from federation.protocol.codec import WIRE_DTYPES, DecodeError, DecodeLimits, TensorSpec, pack, unpack, wire_repr
from federation.protocol.deployed_model import DeploymentInfo, TensorFormat
from federation.protocol.messages import (
    ChunkedMessage, DeployedModel, GlobalModel, ModelChunk, ModelInfo, TrainingPlan, Update, decode_message,
)

MAX_PAYLOAD = 64 * 1024 * 1024
ERROR_TEXT_LIMIT = 300


def _update(tensors: list[tuple[str, np.ndarray]] | None = None) -> bytes:
    return Update(run="r", round=1, sender="c", num_examples=10,
                  tensors=tensors if tensors is not None else [("w", np.zeros(10, np.float32))]).encode()


def _with_extra_field(body: bytes) -> bytes:
    """A valid update (a fixmap of 9 keys) with one more key, "x", whose packed value is `body`."""
    base = _update()
    assert base[0] == 0x89
    return bytes([0x8A]) + base[1:] + msgpack.packb("x") + body


def _array32(count: int, element: bytes) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + element * count


def flat_bomb(count: int) -> bytes:
    """`count` empty arrays in one array: one byte each on the wire, 64 bytes each as Python lists."""
    return _with_extra_field(_array32(count, b"\x90"))


def nested_bomb(count: int, inner: int = 60_000) -> bytes:
    """The same empty arrays in arrays of `inner`, so that no single array is long."""
    outer = count // inner
    return _with_extra_field(b"\xdd" + outer.to_bytes(4, "big") + _array32(inner, b"\x90") * outer)


def map_bomb(count: int, inner: int = 60_000) -> bytes:
    """Empty maps instead of arrays, in arrays of `inner`."""
    outer = count // inner
    return _with_extra_field(b"\xdd" + outer.to_bytes(4, "big") + _array32(inner, b"\x80") * outer)


# ---- item A: container bombs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bomb", [flat_bomb, nested_bomb, map_bomb], ids=["flat", "nested", "maps"])
def test_a_16_mb_container_bomb_is_refused_quickly(bomb) -> None:
    payload = bomb(16_000_000)
    # CPU time of this process, not wall time: a busy machine (parallel test runs) must not fail it. Building the
    # 16 million containers the bomb asks for takes several CPU seconds; refusing it takes a few milliseconds.
    started = time.process_time()
    with pytest.raises(DecodeError) as info:
        decode_message(payload, MAX_PAYLOAD)
    elapsed = time.process_time() - started
    assert elapsed < 1.0, f"{elapsed:.1f} CPU s to refuse a {len(payload)} byte bomb"
    assert info.value.reason == "too_large" and len(str(info.value)) < ERROR_TEXT_LIMIT


@pytest.mark.parametrize("bomb", [flat_bomb, nested_bomb, map_bomb], ids=["flat", "nested", "maps"])
def test_decoding_a_bomb_allocates_at_most_twice_its_size(bomb) -> None:
    payload = bomb(4_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_message(payload, MAX_PAYLOAD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(payload), f"peak {peak / 1e6:.1f} MB decoding {len(payload) / 1e6:.1f} MB"


def test_many_small_scalars_count_against_the_budget_too() -> None:
    element = b"\xcb" + bytes(8)  # a float64: 9 bytes on the wire, 32 as a Python float in a list
    outer = 2_000_000 // 60_000
    payload = _with_extra_field(b"\xdd" + outer.to_bytes(4, "big") + _array32(60_000, element) * outer)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_message(payload, MAX_PAYLOAD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(payload)


def test_lengths_beyond_the_limits_are_refused() -> None:
    limits = DecodeLimits.for_size(1 << 20)
    too_long = [(b"\xc6" + ((1 << 20) + 1).to_bytes(4, "big") + bytes((1 << 20) + 1), "bin"),
                (b"\xdb" + (limits.max_str_len + 1).to_bytes(4, "big") + b"a" * (limits.max_str_len + 1), "str"),
                (b"\xdd" + (limits.max_array_len + 1).to_bytes(4, "big"), "array"),  # refused before allocating
                (b"\xdf" + (limits.max_map_len + 1).to_bytes(4, "big"), "map")]
    for body, what in too_long:
        with pytest.raises(DecodeError, match=f"max_{what}_len") as info:
            unpack(b"\x81\xa1x" + body, limits=limits)
        assert info.value.reason == "too_large"


def test_limits_for_a_model_follow_its_biggest_tensor() -> None:
    specs = [TensorSpec("a", "float32", (3, 3, 1, 32)), TensorSpec("b", "float32", (32,))]
    limits = DecodeLimits.for_model(specs)
    assert limits.max_bin_len == 3 * 3 * 32 * 4
    good = _update([("a", np.zeros((3, 3, 1, 32), np.float32)), ("b", np.zeros(32, np.float32))])
    assert isinstance(decode_message(good, MAX_PAYLOAD, limits), Update)
    big = _update([("a", np.zeros((3, 3, 1, 33), np.float32)), ("b", np.zeros(32, np.float32))])
    with pytest.raises(DecodeError, match="max_bin_len") as info:
        decode_message(big, MAX_PAYLOAD, limits)
    assert info.value.reason == "too_large"


TENSOR_SPECS = st.lists(
    st.tuples(st.sampled_from(WIRE_DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(specs=TENSOR_SPECS, seed=st.integers(0, 2**32 - 1), chunk=st.integers(1024, 4096))
def test_legitimate_messages_round_trip_under_the_model_limits(specs, seed: int, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = [(f"model/layer{i}/w", (rng.random(shape) * 100).astype(dtype)) for i, (dtype, shape) in
               enumerate(specs)]
    limits = DecodeLimits.for_model([TensorSpec(n, a.dtype.name, a.shape) for n, a in tensors])
    update = Update(run="run-1", round=3, sender="pi-kitchen", num_examples=1000,
                    metrics={"loss": 0.5, "accuracy": 0.9, "train_time_s": 12.0}, tensors=tensors)
    model = GlobalModel(run="run-1", round=3, sender="coordinator", model=ModelInfo("small_cnn", (28, 28, 1), 10),
                        train=TrainingPlan(1, 32, 0.001), total_rounds=5, weights_sha256="0" * 64, tensors=tensors)
    for message in (update, model):
        payload = message.encode()
        decoded = decode_message(payload, MAX_PAYLOAD, limits)
        assert [(n, a.dtype, a.shape) for n, a in decoded.tensors] == [(n, a.dtype, a.shape) for n, a in tensors]
        assert all(np.array_equal(a, b, equal_nan=True) for (_, a), (_, b) in zip(decoded.tensors, tensors))
        # the same message chunked: the receiver decodes chunks by size, manifest and whole by the model's limits
        receiver = ChunkedReceiver(MAX_PAYLOAD, limits=limits)
        results = [receiver.receive(t, p) for t, p in
                   outgoing_messages("fedmq/run-1/update/pi-kitchen", payload, chunk, "run-1", 3, message.sender)]
        assert results[-1] is not None and results[-1].size == len(payload)


# ---- item E: error texts stay short whatever the payload holds --------------------------------------------------


def test_a_version_of_two_million_nils_gives_a_short_error() -> None:
    payload = pack({"version": [None] * 2_000_000, "type": "update"})
    with pytest.raises(DecodeError) as info:
        decode_message(payload, MAX_PAYLOAD)
    assert len(str(info.value)) < ERROR_TEXT_LIMIT, len(str(info.value))


def test_wire_repr_is_bounded_and_cheap() -> None:
    assert wire_repr("abc") == "'abc'"
    assert wire_repr([1, 2]) == "[1, 2]"
    for value in ([None] * 2_000_000, "x" * 10_000_000, b"\0" * 10_000_000, {str(i): [i] * 100 for i in range(10**5)},
                  [[[[[[[1]]]]]]], 10**200):
        started = time.process_time()   # CPU time: parallel work on the machine must not fail it
        text = wire_repr(value)
        assert len(text) <= 80 and time.process_time() - started < 0.05, (text, type(value))
    assert wire_repr(b"\0" * 100) == "<100 bytes>"


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=50),
    st.binary(max_size=50),
    st.sampled_from(["L" * 100_000, b"\1" * 100_000]),
    st.builds(lambda n, v: [v] * n, st.integers(1000, 100_000), st.sampled_from([None, 1, "ab", [], {}])),
    st.builds(lambda n: {f"key{i}" * 30: [i] * 10 for i in range(n)}, st.integers(10, 1000)),
    st.recursive(st.text(max_size=200), lambda c: st.lists(c, max_size=8) | st.dictionaries(st.text(max_size=200), c,
                                                                                            max_size=8), max_leaves=30),
)

_INFO = DeploymentInfo(run="r", round=1, variant="int8", sha256="a" * 64, size=3,
                       input=TensorFormat((28, 28, 1), "uint8", 1.0, 0), output=TensorFormat((10,), "uint8", 0.0, 0),
                       class_names=tuple("abcdefghij"), test_accuracy=0.5, test_examples=10)
_MANIFEST, _ = split(bytes(5000), 1024)
_TEMPLATES: list[dict[str, Any]] = [msgpack.unpackb(m.encode()) for m in (
    Update(run="r", round=1, sender="c", num_examples=10, metrics={"loss": 1.0},
           tensors=[("w", np.zeros((2, 3), np.float32))]),
    GlobalModel(run="r", round=1, sender="coordinator", model=ModelInfo("small_cnn", (28, 28, 1), 10),
                train=TrainingPlan(1, 32, 0.01), total_rounds=3, tensors=[("w", np.zeros(3, np.float32))]),
    DeployedModel(run="r", round=1, sender="coordinator", info=_INFO, model=b"abc"),
    ModelChunk(run="r", round=1, sender="c", transfer="a" * 64, index=0, count=2, sha256="b" * 64, data=b"x"),
    ChunkedMessage(run="r", round=1, sender="c", manifest=_MANIFEST),
)]


def _paths(raw: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a message map, into nested maps and lists (e.g. ("tensors", 0, "shape"))."""
    out = [prefix] if prefix else []
    children = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else []
    for key, value in children:
        out += _paths(value, (*prefix, key))
    return out


def _replace(raw: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(raw) if isinstance(raw, dict) else list(raw)
    copy[path[0]] = _replace(raw[path[0]], path[1:], value)
    return copy


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from(_TEMPLATES), data=st.data(), value=HOSTILE)
def test_no_decode_error_text_grows_with_the_payload(template: dict[str, Any], data: st.DataObject,
                                                     value: Any) -> None:
    path = data.draw(st.sampled_from(_paths(template)))
    raw = _replace(template, path, value)
    try:
        payload = pack(raw)
    except (ValueError, OverflowError):
        return  # msgpack can't hold it (an int beyond 64 bits)
    try:
        decode_message(payload, MAX_PAYLOAD)
    except DecodeError as exc:
        assert len(str(exc)) < ERROR_TEXT_LIMIT, (path, str(exc)[:500])


@pytest.mark.parametrize("key", ["sha256", "chunk_sha256", "size"])
def test_a_manifest_error_does_not_echo_a_huge_field(key: str) -> None:
    wire = _MANIFEST.to_wire()
    with pytest.raises(ChunkError) as info:
        ChunkManifest.from_wire({**wire, key: ["f" * 64] * 50_000 if key == "chunk_sha256" else [None] * 500_000})
    assert len(str(info.value)) < ERROR_TEXT_LIMIT
    with pytest.raises(ChunkError) as info:
        ChunkManifest.from_wire({**wire, "chunk_sha256": [*wire["chunk_sha256"][:-1], "z" * 1_000_000]})
    assert len(str(info.value)) < ERROR_TEXT_LIMIT
