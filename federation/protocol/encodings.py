"""Smaller tensors on the wire: float16, affine int8 per block, and top-k (bit-packed index gaps plus values in
any of the dense encodings), with the run's encoding plan and the checks that refuse hostile encoded payloads.

PROTOCOL.md "Encoded tensors" gives the byte layouts; a tensor map without `encoding` is the raw form of codec.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from federation.protocol.codec import (
    MAX_TENSOR_DIMS, WIRE_DTYPES, DecodeError, decode_tensor, encode_tensor, wire_repr,
)

UPLINK_ENCODINGS = ("float32", "float16", "int8", "topk")   # float32: raw weights, as before this module
DOWNLINK_ENCODINGS = ("float32", "float16")
TOPK_VALUE_ENCODINGS = ("float32", "float16", "int8")
TENSOR_ENCODINGS = ("float16", "int8", "topk")              # values of a tensor map's `encoding` field
MAX_INDEX_BITS = 32
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class EncodingPlan:
    """The run's encodings, chosen by the coordinator and announced in every round's `train.encoding`.

    `uplink` other than float32 makes devices send deltas (trained minus the round's global weights) of their
    floating tensors in that encoding; top-k values go as `topk_values`; int8 blocks hold `int8_block` elements."""

    uplink: str = "float32"
    downlink: str = "float32"
    topk_fraction: float = 0.01
    topk_values: str = "float16"
    int8_block: int = 256

    @property
    def sends_deltas(self) -> bool:
        return self.uplink != "float32"

    def to_wire(self) -> dict[str, Any]:
        return {"uplink": self.uplink, "downlink": self.downlink, "topk_fraction": self.topk_fraction,
                "topk_values": self.topk_values, "int8_block": self.int8_block}

    @classmethod
    def from_wire(cls, raw: Any) -> "EncodingPlan":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise DecodeError(f"train.encoding: expected a map, got {type(raw).__name__}")
        plan = cls(uplink=_choice(raw, "uplink", UPLINK_ENCODINGS, "float32"),
                   downlink=_choice(raw, "downlink", DOWNLINK_ENCODINGS, "float32"),
                   topk_fraction=_number(raw, "topk_fraction", 0.01),
                   topk_values=_choice(raw, "topk_values", TOPK_VALUE_ENCODINGS, "float16"),
                   int8_block=_integer(raw, "int8_block", 256))
        if not 0 < plan.topk_fraction <= 1:
            raise DecodeError(f"train.encoding: topk_fraction {plan.topk_fraction!r} is not in (0, 1]")
        if plan.int8_block < 1:
            raise DecodeError(f"train.encoding: int8_block {plan.int8_block} is below 1")
        return plan


@dataclass(frozen=True)
class SparseDelta:
    """A decoded top-k tensor: `values` at the flat (C order) `indices` of a tensor of `shape`, zero elsewhere.
    Indices are int64, strictly increasing, below the element count."""

    shape: tuple[int, ...]
    indices: np.ndarray
    values: np.ndarray

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def dense(self, dtype: Any = np.float32) -> np.ndarray:
        out = np.zeros(math.prod(self.shape), dtype=dtype)
        out[self.indices] = self.values
        return out.reshape(self.shape)


@dataclass(frozen=True)
class Encoded:
    """One tensor in an encoding: its wire fields (without `name`; empty once received) and what they decode to,
    a dense array of the logical dtype or a SparseDelta. `dtype` and `shape` are the logical ones."""

    encoding: str
    value: np.ndarray | SparseDelta
    wire: dict[str, Any]
    values_encoding: str = ""      # top-k only: float32, float16 or int8

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def values(self) -> np.ndarray:
        """The decoded numbers themselves: the dense array, or the sparse values."""
        return self.value.values if isinstance(self.value, SparseDelta) else self.value


WireTensor = np.ndarray | Encoded


# ---- encoding ----------------------------------------------------------------------------------------------------


def is_encodable(array: np.ndarray) -> bool:
    """Floating tensors with at least one element are encoded; others always travel raw."""
    return array.dtype.kind == "f" and array.size > 0


def encode_float16(array: np.ndarray) -> Encoded:
    arr = np.asarray(array)
    half = np.ascontiguousarray(arr, dtype="<f2")
    if not np.isfinite(half).all():
        raise ValueError("float16 encoding: the tensor holds NaN, Inf or values beyond float16's range (65504)")
    return Encoded("float16", half.astype(arr.dtype).reshape(arr.shape),
                   {"dtype": arr.dtype.name, "shape": list(arr.shape), "encoding": "float16", "data": half.tobytes()})


def int8_block_for(count: int, block: int) -> int:
    """The block size used for a tensor of `count` elements: `block` when it divides the count, else the whole
    tensor as one block."""
    return block if 0 < block <= count and count % block == 0 else count


def encode_int8(array: np.ndarray, block: int) -> Encoded:
    """Affine int8 per block: real = scale x (q - zero_point), the range of each block widened to hold 0."""
    arr = np.asarray(array)
    if not np.isfinite(arr).all():
        raise ValueError("int8 encoding: the tensor holds NaN or Inf")
    count = arr.size
    block = int8_block_for(count, block)
    blocks = arr.astype(np.float64).reshape(count // block, block)
    lo = np.minimum(blocks.min(axis=1), 0.0)
    hi = np.maximum(blocks.max(axis=1), 0.0)
    exact = (hi - lo) / 255.0
    scale = exact.astype("<f4")
    # The float32 scale must not be below the exact one, or 255 steps no longer span the block and its extremes
    # are clipped: round up where float32 rounded down (this matters for subnormal ranges, whose float32
    # spacing is coarse; elsewhere it is at most one ulp).
    with np.errstate(over="ignore"):
        scale = np.where(scale.astype(np.float64) < exact, np.nextafter(scale, np.float32(np.inf)), scale).astype("<f4")
    # A range so small that (hi - lo) / 255 underflows to 0 (float64 subnormals): float32's smallest step, which
    # rounds the block to 0, well within half a step of it (found by the property test).
    scale[(scale == 0) & (hi > lo)] = np.nextafter(np.float32(0), np.float32(1))
    scale[hi == lo] = 1.0                   # an all-zero block: any scale, zero point 0 gives exact zeros
    if not np.isfinite(scale).all():
        raise ValueError("int8 encoding: the tensor's range overflows float32")
    s64 = scale.astype(np.float64)[:, None]
    zero_point = np.clip(np.round(INT8_MIN - lo / scale.astype(np.float64)), INT8_MIN, INT8_MAX).astype(np.int8)
    z64 = zero_point.astype(np.float64)[:, None]
    q = np.clip(np.round(blocks / s64) + z64, INT8_MIN, INT8_MAX).astype(np.int8)
    decoded = (s64 * (q.astype(np.float64) - z64)).astype(arr.dtype).reshape(arr.shape)
    return Encoded("int8", decoded, {"dtype": arr.dtype.name, "shape": list(arr.shape), "encoding": "int8",
                                     "block": block, "scale": scale.tobytes(), "zero_point": zero_point.tobytes(),
                                     "data": q.tobytes()})


def encode_dense(array: np.ndarray, encoding: str, int8_block: int = 256) -> WireTensor:
    """`array` in a dense encoding: float32 (raw, unchanged), float16 or int8."""
    if encoding == "float32":
        return np.asarray(array)
    if encoding == "float16":
        return encode_float16(array)
    if encoding == "int8":
        return encode_int8(array, int8_block)
    raise ValueError(f"unknown dense encoding {encoding!r} (one of {', '.join(TOPK_VALUE_ENCODINGS)})")


def topk_count(count: int, fraction: float) -> int:
    """How many elements top-k keeps of a tensor of `count` elements: ceil(fraction x count), at least 1."""
    return min(count, max(1, math.ceil(fraction * count)))


def encode_topk(delta: np.ndarray, fraction: float, values: str = "float16", int8_block: int = 256) -> Encoded:
    """The `fraction` largest-magnitude elements of `delta`: indices as bit-packed gaps, values in `values`."""
    arr = np.asarray(delta)
    if not np.isfinite(arr).all():
        raise ValueError("top-k encoding: the tensor holds NaN or Inf")
    flat = arr.reshape(-1)
    n = flat.size
    k = topk_count(n, fraction)
    indices = np.sort(np.argpartition(np.abs(flat), n - k)[n - k:]) if k < n else np.arange(n)
    bits, packed = pack_indices(indices)
    kept = encode_dense(flat[indices], values, int8_block)
    if isinstance(kept, Encoded):
        value_map, decoded = kept.wire, np.asarray(kept.value)
    else:
        value_map, decoded = encode_tensor("", kept), kept
        del value_map["name"]
    sparse = SparseDelta(tuple(arr.shape), indices.astype(np.int64), decoded.astype(arr.dtype, copy=False))
    return Encoded("topk", sparse, {"dtype": arr.dtype.name, "shape": list(arr.shape), "encoding": "topk",
                                    "count": int(k), "index_bits": bits, "indices": packed, "values": value_map},
                   values)


def pack_indices(indices: np.ndarray) -> tuple[int, bytes]:
    """Strictly increasing indices as gaps (the first index, then each one minus the one before), every gap in
    the same `bits` bits, least significant bit first, packed into bytes from bit 0 of byte 0 on."""
    idx = np.asarray(indices, dtype=np.int64)
    gaps = np.diff(idx, prepend=0)
    bits = max(1, int(gaps.max()).bit_length()) if gaps.size else 1
    if bits > MAX_INDEX_BITS:
        raise ValueError(f"top-k: an index gap needs {bits} bits (at most {MAX_INDEX_BITS})")
    matrix = ((gaps[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return bits, np.packbits(matrix.reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes | np.ndarray, count: int, bits: int) -> np.ndarray:
    """The inverse of pack_indices: `count` indices (int64), not yet checked against a tensor's size."""
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    gaps = unpacked.reshape(count, bits).astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))
    return np.cumsum(gaps)


def encode_model(weights: Sequence[np.ndarray], downlink: str) -> tuple[list[WireTensor], list[np.ndarray]]:
    """The global model in the downlink encoding: (what goes on the wire, the weights devices will load)."""
    if downlink not in DOWNLINK_ENCODINGS:
        raise ValueError(f"unknown downlink encoding {downlink!r} (one of {', '.join(DOWNLINK_ENCODINGS)})")
    wire: list[WireTensor] = []
    loaded: list[np.ndarray] = []
    for w in weights:
        if downlink == "float32" or not is_encodable(w):
            wire.append(w)
            loaded.append(w)
        else:
            encoded = encode_float16(w)
            wire.append(encoded)
            loaded.append(np.asarray(encoded.value))
    return wire, loaded


def wire_maps(named: Sequence[tuple[str, WireTensor]]) -> list[dict[str, Any]]:
    """The tensor maps of a message: raw arrays as codec.encode_tensor makes them, encoded ones with their fields."""
    return [{"name": name, **t.wire} if isinstance(t, Encoded) else encode_tensor(name, t) for name, t in named]


# ---- decoding ----------------------------------------------------------------------------------------------------


def decode_wire_tensors(items: Any, allow_topk: bool = True) -> list[tuple[str, WireTensor]]:
    """The tensors of a message: raw ones as codec.decode_tensor gives them, encoded ones decoded and checked."""
    if not isinstance(items, list):
        raise DecodeError(f"tensors is {type(items).__name__}, expected a list")
    return [decode_wire_tensor(item, allow_topk) for item in items]


def decode_model_tensors(items: Any) -> list[tuple[str, np.ndarray]]:
    """A global model's tensors, dense (raw or float16 or int8 encoded: top-k is for updates only)."""
    out = []
    for name, t in decode_wire_tensors(items, allow_topk=False):
        value = t.value if isinstance(t, Encoded) else t
        assert isinstance(value, np.ndarray)  # allow_topk=False refused every SparseDelta
        out.append((name, value))
    return out


def decode_wire_tensor(item: Any, allow_topk: bool = True) -> tuple[str, WireTensor]:
    if not isinstance(item, dict) or "encoding" not in item:
        return decode_tensor(item)
    encoding = item["encoding"]
    name, dtype, shape = _header(item)
    label = f"tensor {wire_repr(name)}"
    if not isinstance(encoding, str) or encoding not in TENSOR_ENCODINGS:
        raise DecodeError(f"{label}: unknown encoding {wire_repr(encoding)} (one of {', '.join(TENSOR_ENCODINGS)})",
                          "wrong_encoding")
    if encoding == "topk":
        if not allow_topk:
            raise DecodeError(f"{label}: top-k encoding is for updates only", "wrong_encoding")
        values = item.get("values")
        inner = values.get("encoding", "float32") if isinstance(values, dict) else ""
        return name, Encoded("topk", _decode_topk(item, label, dtype, shape), {}, str(inner))
    return name, Encoded(encoding, _decode_dense(item, label, dtype, shape, encoding), {})


def _header(item: dict[str, Any]) -> tuple[str, np.dtype, tuple[int, ...]]:
    name, dtype, shape = item.get("name", ""), item.get("dtype"), item.get("shape")
    if not isinstance(name, str):
        raise DecodeError("tensor name is not a string")
    label = f"tensor {wire_repr(name)}"
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES or np.dtype(dtype).kind != "f":
        raise DecodeError(f"{label}: an encoded tensor's dtype must be a float type, got {wire_repr(dtype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise DecodeError(f"{label}: bad shape {wire_repr(shape)}")
    if math.prod(shape) < 1:
        raise DecodeError(f"{label}: an encoded tensor has at least one element (an empty one is sent raw)")
    if math.prod(shape) >= 2 ** 40:
        raise DecodeError(f"{label}: shape {wire_repr(shape)} is absurdly large", "too_large")
    return name, np.dtype(dtype), tuple(shape)


def _field(item: dict[str, Any], key: str, types: type | tuple[type, ...], label: str) -> Any:
    if key not in item:
        raise DecodeError(f"{label}: lacks {key}")
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise DecodeError(f"{label}: {key} is {type(value).__name__}")
    return value


def _bytes(item: dict[str, Any], key: str, size: int, label: str) -> np.ndarray:
    data = _field(item, key, (bytes, bytearray, memoryview), label)
    if len(data) != size:
        raise DecodeError(f"{label}: {key} holds {len(data)} bytes, {size} expected")
    return np.frombuffer(data, dtype=np.uint8)


def _decode_dense(item: dict[str, Any], label: str, dtype: np.dtype, shape: tuple[int, ...],
                  encoding: str) -> np.ndarray:
    count = math.prod(shape)
    if encoding == "float16":
        out = _bytes(item, "data", 2 * count, label).view("<f2").astype(dtype).reshape(shape)
    else:
        block = _field(item, "block", int, label)
        if block < 1 or count % block:
            raise DecodeError(f"{label}: int8 block size {block} does not divide the {count} elements")
        blocks = count // block
        scale = _bytes(item, "scale", 4 * blocks, label).view("<f4").astype(np.float64)
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise DecodeError(f"{label}: an int8 scale is 0, negative, NaN or Inf", "not_finite")
        zero_point = _bytes(item, "zero_point", blocks, label).view(np.int8).astype(np.float64)
        q = _bytes(item, "data", count, label).view(np.int8).astype(np.float64).reshape(blocks, block)
        with np.errstate(over="ignore"):   # a hostile scale overflows the dtype: refused just below
            out = (scale[:, None] * (q - zero_point[:, None])).astype(dtype).reshape(shape)
    if not np.isfinite(out).all():
        raise DecodeError(f"{label}: decodes to NaN or Inf", "not_finite")
    return out


def _decode_topk(item: dict[str, Any], label: str, dtype: np.dtype, shape: tuple[int, ...]) -> SparseDelta:
    count = math.prod(shape)
    k = _field(item, "count", int, label)
    bits = _field(item, "index_bits", int, label)
    if not 1 <= k <= count:
        raise DecodeError(f"{label}: top-k count {k} is not in 1..{count}")
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise DecodeError(f"{label}: index_bits {bits} is not in 1..{MAX_INDEX_BITS}")
    packed = _bytes(item, "indices", (k * bits + 7) // 8, label)
    indices = unpack_indices(packed, k, bits)
    if k > 1 and not (np.diff(indices) > 0).all():
        raise DecodeError(f"{label}: duplicate top-k indices (a gap of 0)")
    if indices[-1] >= count:
        raise DecodeError(f"{label}: top-k index {int(indices[-1])} is out of range for {count} elements")
    values = item.get("values")
    if not isinstance(values, dict):
        raise DecodeError(f"{label}: top-k values is {type(values).__name__}, expected a tensor map")
    value_label = f"{label} values"
    if "encoding" in values and values["encoding"] not in ("float16", "int8"):
        raise DecodeError(f"{value_label}: encoding {wire_repr(values['encoding'])} (float16, int8, or none for "
                          "float32)", "wrong_encoding")
    if values.get("shape") != [k]:
        raise DecodeError(f"{value_label}: shape {wire_repr(values.get('shape'))} does not match count {k}")
    if "encoding" in values:
        _, vdtype, vshape = _header({**values, "name": ""})
        decoded = _decode_dense(values, value_label, vdtype, vshape, values["encoding"])
    else:
        _, raw = decode_tensor({**values, "name": ""})
        if raw.dtype.kind != "f":
            raise DecodeError(f"{value_label}: dtype {raw.dtype.name} is not a float type")
        decoded = raw
        if not np.isfinite(decoded).all():
            raise DecodeError(f"{value_label}: NaN or Inf", "not_finite")
    return SparseDelta(shape, indices, decoded.astype(dtype, copy=False))


# ---- the plan's rules --------------------------------------------------------------------------------------------


def check_update_encoding(tensors: Sequence[tuple[str, WireTensor]], base_sha256: str, plan: EncodingPlan,
                          round_sha256: str) -> None:
    """DecodeError (`wrong_encoding`) unless the update is encoded as `plan` says: with a compressed uplink,
    deltas against the round's model (`base_sha256` = its digest) with every floating tensor in the plan's
    encoding; with float32, whole weights, raw."""
    expected = plan.uplink if plan.sends_deltas else "float32"
    if plan.sends_deltas and base_sha256 != round_sha256:
        raise DecodeError(f"the run's uplink is {plan.uplink} deltas against the round's model {round_sha256[:12]}"
                          f"...; the update's base_sha256 is {wire_repr(base_sha256 or None)}", "wrong_encoding")
    if not plan.sends_deltas and base_sha256:
        raise DecodeError("the run's uplink is float32 weights; this update sends deltas (base_sha256)",
                          "wrong_encoding")
    if expected == "topk":
        expected = f"topk with {plan.topk_values} values"
    for name, t in tensors:
        got = t.encoding if isinstance(t, Encoded) else "float32"
        if got == "topk" and isinstance(t, Encoded):
            got = f"topk with {t.values_encoding} values"
        want = expected if t.dtype.kind == "f" and math.prod(t.shape) > 0 else "float32"
        if got != want:
            raise DecodeError(f"tensor {wire_repr(name)} is encoded as {got}; the run's uplink encoding is "
                              f"{want}", "wrong_encoding")


# ---- wire helpers ------------------------------------------------------------------------------------------------


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise DecodeError(f"train.encoding: {key} {wire_repr(value)} is not one of {', '.join(choices)}")
    return value


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DecodeError(f"train.encoding: {key} must be a finite number, got {wire_repr(value)}")
    return float(value)


def _integer(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"train.encoding: {key} must be an int, got {wire_repr(value)}")
    return value
