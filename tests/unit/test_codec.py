"""Tests for federation.protocol.codec: tensors round-trip exactly and zero-copy; bad payloads raise DecodeError only."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.codec import (
    MAX_NESTING,
    MAX_TENSOR_DIMS,
    WIRE_DTYPES,
    DecodeError,
    TensorSpec,
    check_tensors,
    decode_tensor,
    decode_tensors,
    encode_tensor,
    encode_tensors,
    pack,
    unpack,
)

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def roundtrip(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    payload = pack({"t": encode_tensor(name, array)})
    return decode_tensor(unpack(payload)["t"])


def assert_same_tensor(original: np.ndarray, decoded: np.ndarray) -> None:
    assert decoded.dtype == original.dtype.newbyteorder("<") or decoded.dtype == original.dtype
    assert decoded.dtype.name == original.dtype.name
    assert decoded.dtype.byteorder in ("<", "=", "|")
    assert decoded.shape == original.shape
    floating = original.dtype.kind == "f"
    assert np.array_equal(decoded, original, equal_nan=floating)
    # Bit-exact, NaN payloads and -0.0 included.
    assert decoded.tobytes() == original.astype(original.dtype.newbyteorder("<")).tobytes()


# ---- round trips ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(array=hnp.arrays(dtype=st.sampled_from(WIRE_DTYPES), shape=SHAPES))
def test_every_wire_dtype_and_shape_round_trips_exactly(array: np.ndarray) -> None:
    name, decoded = roundtrip("layer/kernel:0", array)
    assert name == "layer/kernel:0"
    assert_same_tensor(array, decoded)


@settings(max_examples=200, deadline=None)
@given(array=hnp.arrays(dtype=st.sampled_from(WIRE_DTYPES), shape=SHAPES))
def test_decoded_array_is_a_read_only_view_of_the_payload(array: np.ndarray) -> None:
    _, decoded = roundtrip("w", array)
    assert decoded.base is not None
    assert not decoded.flags.writeable
    with pytest.raises(ValueError):
        decoded[...] = 0


def test_decoded_array_shares_memory_with_the_received_bytes() -> None:
    item = encode_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    _, decoded = decode_tensor(item)
    raw = np.frombuffer(item["data"], dtype=np.uint8)
    assert np.shares_memory(decoded, raw)


@settings(max_examples=200, deadline=None)
@given(array=hnp.arrays(dtype=st.sampled_from(WIRE_DTYPES).map(lambda d: np.dtype(d).newbyteorder(">")),
                        shape=SHAPES))
def test_big_endian_arrays_are_sent_little_endian_and_round_trip(array: np.ndarray) -> None:
    item = encode_tensor("w", array)
    assert item["dtype"] == array.dtype.name  # "float32", not ">f4"
    assert item["data"] == array.astype(array.dtype.newbyteorder("<")).tobytes()
    _, decoded = roundtrip("w", array)
    assert_same_tensor(array, decoded)


def test_big_endian_bytes_on_the_wire_are_little_endian() -> None:
    item = encode_tensor("w", np.array([1], dtype=">i4"))
    assert item["data"] == b"\x01\x00\x00\x00"


def test_non_contiguous_input_round_trips() -> None:
    base = np.arange(24, dtype=np.int16).reshape(4, 6)
    view = base[::2, ::3].T
    _, decoded = roundtrip("w", view)
    assert_same_tensor(view, decoded)


def test_scalar_and_zero_size_shapes() -> None:
    for array in (np.float32(3.5), np.zeros((0,), np.int8), np.zeros((3, 0, 2), np.float64)):
        array = np.asarray(array)
        item = encode_tensor("w", array)
        assert item["shape"] == list(array.shape)
        _, decoded = roundtrip("w", array)
        assert_same_tensor(array, decoded)


def test_encode_tensors_and_decode_tensors_keep_order_and_names() -> None:
    named = [("a", np.ones((2,), np.float32)), ("b", np.zeros((1, 1), np.int64)), ("c", np.array(True))]
    decoded = decode_tensors(unpack(pack({"t": encode_tensors(named)}))["t"])
    assert [n for n, _ in decoded] == ["a", "b", "c"]
    for (_, a), (_, b) in zip(named, decoded):
        assert_same_tensor(a, b)


@pytest.mark.parametrize("dtype", ["complex64", "float128" if hasattr(np, "float128") else "complex128",
                                   "object", "U3", "datetime64[s]"])
def test_encode_rejects_dtypes_not_on_the_wire(dtype: str) -> None:
    with pytest.raises(ValueError, match="'w'"):
        encode_tensor("w", np.zeros(2, dtype=dtype))


# ---- decode errors ----------------------------------------------------------------------------------


def good_item(**changes: object) -> dict[str, object]:
    item = encode_tensor("dense/kernel", np.arange(6, dtype=np.float32).reshape(2, 3))
    item.update(changes)
    return item


@pytest.mark.parametrize("changes", [
    {"data": b"\x00" * 23},                         # one byte short
    {"data": b"\x00" * 25},                         # one byte long
    {"data": b""},
    {"shape": [3, 3]},                              # count mismatch
    {"dtype": "float64"},                           # size mismatch with float32 bytes
    {"dtype": "complex64"},
    {"dtype": "object"},
    {"dtype": ">f4"},
    {"dtype": 7},
    {"shape": [2, -3]},
    {"shape": [-1]},
    {"shape": (2, 3)},                              # a tuple never comes out of msgpack; not a list
    {"shape": "2,3"},
    {"shape": 6},
    {"shape": [2, 3.0]},
    {"shape": [True, 6]},
    {"shape": [1] * (MAX_TENSOR_DIMS + 1)},
    {"shape": [2**64 - 1]},                         # would overflow int64 arithmetic
    {"shape": [2**32, 2**32], "data": b""},         # int64 product wraps to 0, matching empty data
    {"shape": [2**64 - 1, 2**64 - 1], "data": b""},
    {"shape": [2**40, 2**40, 0], "data": b""},      # zero-size but too big for numpy
    {"data": "not bytes"},
    {"data": [1, 2, 3]},
    {"data": None},
])
def test_decode_errors_name_the_tensor(changes: dict[str, object]) -> None:
    with pytest.raises(DecodeError, match="'dense/kernel'"):
        decode_tensor(good_item(**changes))


@pytest.mark.parametrize("missing", ["dtype", "shape", "data"])
def test_missing_keys_raise_decode_error_naming_the_tensor_and_key(missing: str) -> None:
    item = good_item()
    del item[missing]
    with pytest.raises(DecodeError, match=f"'dense/kernel'.*{missing}"):
        decode_tensor(item)


def test_missing_name_and_bad_name() -> None:
    item = good_item()
    del item["name"]
    with pytest.raises(DecodeError, match="lacks name"):
        decode_tensor(item)
    with pytest.raises(DecodeError, match="name"):
        decode_tensor(good_item(name=5))


@pytest.mark.parametrize("item", [None, [], "tensor", 3, b"xx"])
def test_non_map_tensor_entry(item: object) -> None:
    with pytest.raises(DecodeError, match="expected a map"):
        decode_tensor(item)


@pytest.mark.parametrize("items", [None, {}, "x", 3])
def test_decode_tensors_needs_a_list(items: object) -> None:
    with pytest.raises(DecodeError, match="expected a list"):
        decode_tensors(items)


def test_decode_error_is_a_value_error_with_a_reason() -> None:
    exc = DecodeError("x")
    assert isinstance(exc, ValueError)
    assert exc.reason == "malformed"
    assert DecodeError("x", "too_large").reason == "too_large"


# ---- unpack -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[1, 2], 3, "text", b"bytes", None, True, 1.5])
def test_unpack_rejects_non_map_payloads(value: object) -> None:
    with pytest.raises(DecodeError, match="expected a map"):
        unpack(msgpack.packb(value, use_bin_type=True))


def test_unpack_accepts_a_map_and_returns_it() -> None:
    message = {"a": 1, "b": [1, 2, {"c": b"\x00"}], "d": "é"}
    assert unpack(pack(message)) == message
    assert unpack(bytearray(pack(message))) == message
    assert unpack(memoryview(pack(message))) == message


def test_unpack_rejects_every_truncation_of_a_valid_payload() -> None:
    payload = pack({"t": encode_tensor("w", np.arange(10, dtype=np.float32)), "k": "v", "n": [1, 2, 3]})
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            unpack(payload[:cut])


def test_unpack_rejects_trailing_data() -> None:
    with pytest.raises(DecodeError, match="malformed"):
        unpack(pack({"a": 1}) + b"\x01")


@pytest.mark.parametrize("garbage", [b"\xc1", b"\xff" * 40, b"\xdf\xff\xff\xff\xff", b"\x00\x01\x02",
                                     b"\xc4\xff\xff", b"\x81\x01\x02"])  # last one: int map key
def test_unpack_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(garbage)


@pytest.mark.parametrize("value", [
    msgpack.ExtType(5, b"data"),
    {"a": msgpack.ExtType(1, b"")},
    {"a": [1, {"b": msgpack.ExtType(127, b"x" * 20)}]},
    {"a": msgpack.Timestamp(1, 0)},          # ext type -1 bypasses ext_hook in msgpack
    {"a": [msgpack.Timestamp(0, 5)]},
    msgpack.Timestamp(1, 0),
])
def test_unpack_rejects_ext_types(value: object) -> None:
    with pytest.raises(DecodeError, match="extension type|expected a map"):
        unpack(msgpack.packb(value, use_bin_type=True))


def test_unpack_rejects_deep_nesting_that_would_break_str() -> None:
    deep = b"\x81\xa1a" + b"\x91" * 1000 + b"\x01"  # {"a": [[[...1...]]]} 1000 levels deep
    with pytest.raises(DecodeError, match="deeper"):
        unpack(deep)
    nested: object = 1
    for _ in range(MAX_NESTING - 1):
        nested = [nested]
    assert unpack(pack({"a": nested}))["a"] == nested  # exactly at the limit is fine


def test_unpack_too_large_payload() -> None:
    payload = pack({"data": b"\x00" * 100})
    with pytest.raises(DecodeError) as info:
        unpack(payload, max_size=len(payload) - 1)
    assert info.value.reason == "too_large"
    assert str(len(payload)) in str(info.value)
    assert unpack(payload, max_size=len(payload)) == {"data": b"\x00" * 100}
    assert unpack(payload, max_size=0) == {"data": b"\x00" * 100}  # 0: no limit


def test_too_large_is_checked_before_parsing() -> None:
    with pytest.raises(DecodeError) as info:
        unpack(b"\xc1" * 50, max_size=10)  # garbage, but the size rule wins
    assert info.value.reason == "too_large"


@settings(max_examples=1000, deadline=None)
@given(payload=st.binary(max_size=200))
def test_unpack_of_arbitrary_bytes_raises_only_decode_error(payload: bytes) -> None:
    try:
        message = unpack(payload)
    except DecodeError as exc:
        assert str(exc)
        return
    assert isinstance(message, dict)


@settings(max_examples=500, deadline=None)
@given(prefix=st.sampled_from([b"\x81", b"\x82\xa1a", b"\xde\x00\x02", b"\x81\xa4data\xc4"]),
       rest=st.binary(max_size=100))
def test_unpack_of_map_prefixed_garbage_raises_only_decode_error(prefix: bytes, rest: bytes) -> None:
    try:
        assert isinstance(unpack(prefix + rest), dict)
    except DecodeError:
        pass


# ---- check_tensors ----------------------------------------------------------------------------------

SPECS = [TensorSpec("conv/kernel", "float32", (3, 3, 1, 8)), TensorSpec("conv/bias", "float32", (8,))]


def received_tensors() -> list[tuple[str, np.ndarray]]:
    return [("conv/kernel", np.zeros((3, 3, 1, 8), np.float32)), ("conv/bias", np.zeros((8,), np.float32))]


def test_check_tensors_accepts_a_match() -> None:
    check_tensors(received_tensors(), SPECS)
    check_tensors([], [])


def test_check_tensors_accepts_decoded_tensors() -> None:
    decoded = decode_tensors(unpack(pack({"t": encode_tensors(received_tensors())}))["t"])
    check_tensors(decoded, SPECS)


def _bad(index: int, name: str | None = None, array: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    tensors = received_tensors()
    old_name, old_array = tensors[index]
    tensors[index] = (name or old_name, old_array if array is None else array)
    return tensors


@pytest.mark.parametrize("received, pattern", [
    (received_tensors()[:1], "1 tensors received, the model has 2"),
    (received_tensors() + [("extra", np.zeros(1, np.float32))], "3 tensors received"),
    ([], "0 tensors received"),
    (_bad(1, name="conv/b"), "'conv/b'.*'conv/bias'"),
    (_bad(0, array=np.zeros((3, 3, 1, 8), np.float64)), "'conv/kernel'.*float64"),
    (_bad(1, array=np.zeros((8,), np.float16)), "'conv/bias'.*float16"),
    (_bad(1, array=np.zeros((9,), np.float32)), r"'conv/bias'.*\(9,\)"),
    (_bad(0, array=np.zeros((3, 3, 8, 1), np.float32)), "'conv/kernel'.*shape"),
    (_bad(1, array=np.zeros((), np.float32)), "'conv/bias'.*shape"),
])
def test_check_tensors_rejects_mismatches(received: list[tuple[str, np.ndarray]], pattern: str) -> None:
    with pytest.raises(DecodeError, match=pattern) as info:
        check_tensors(received, SPECS)
    assert info.value.reason == "bad_tensors"
