"""Tensor and payload encoding for the wire: msgpack maps, tensors as raw little-endian bytes.

Decoding is zero-copy (arrays are `np.frombuffer` views over the payload) and bounded by DecodeLimits."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import msgpack
import numpy as np

from federation.errors import FedmqError

# dtype names allowed on the wire (numpy names; bytes are always little-endian).
WIRE_DTYPES: tuple[str, ...] = (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)
MAX_TENSOR_DIMS = 8
MAX_NESTING = 32  # maps/arrays inside each other; real messages use about 4
# A chunk manifest lists up to federation.protocol.byte_chunks.MAX_CHUNKS (65536) hashes: the longest array a message needs.
MAX_ARRAY_LEN = 65536 + 1024
# A decoded object costs at most about 64 bytes (an empty dict and its slot), so one object per BYTES_PER_OBJECT
# payload bytes keeps a decode within about the payload's size; OBJECT_FLOOR (3 MB at most) lets small messages
# hold a few long lists anyway (a round_metrics history: 7 objects per round in about 50 bytes).
BYTES_PER_OBJECT = 64
OBJECT_FLOOR = 50_000
WIRE_REPR_LIMIT = 80
MAX_ERROR_TEXT = 1000  # no error text built from the wire grows beyond this, whoever built it


class DecodeError(FedmqError, ValueError):
    """A payload that can't be decoded or validated; the text says why, `reason` is a short code."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(clip_text(message))
        self.reason = reason


class _WireRepr(reprlib.Repr):
    """repr() that looks at a bounded part of a value: a few elements, a few levels, no bytes content."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 4
        self.maxstring = self.maxlong = self.maxother = 60

    def repr_bytes(self, obj: bytes, level: int) -> str:
        return f"<{len(obj)} bytes>"

    repr_bytearray = repr_memoryview = repr_bytes


_WIRE_REPR = _WireRepr()


def wire_repr(value: Any, limit: int = WIRE_REPR_LIMIT) -> str:
    """repr() of a value from the wire for an error or log text: at most `limit` characters, in O(limit) time."""
    return clip_text(_WIRE_REPR.repr(value), limit)


def clip_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class DecodeLimits:
    """Caps that msgpack applies while it parses, so that a payload costs O(its size) time and memory.

    msgpack checks each str, bin, array and map header against its cap before allocating; `unpack` also counts
    every decoded object (containers and their elements) against `max_objects` and against `BYTES_PER_OBJECT`
    per payload byte, which per-container caps don't bound (16 million empty arrays in arrays of 60,000)."""

    max_bin_len: int
    max_str_len: int = 64 * 1024
    max_array_len: int = MAX_ARRAY_LEN
    max_map_len: int = 4096
    max_nesting: int = MAX_NESTING
    max_objects: int = 10_000_000

    @classmethod
    def for_size(cls, max_payload: int) -> "DecodeLimits":
        """The default: any message of up to `max_payload` bytes."""
        return cls(max_bin_len=max(max_payload, 1))

    @classmethod
    def for_model(cls, specs: Iterable[TensorSpec]) -> "DecodeLimits":
        """For an update (or global model) of the model described by `specs`: no byte string longer than its
        biggest tensor, short strings and maps. Arrays stay as long as a chunk manifest needs."""
        specs = list(specs)
        biggest = max((math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in specs), default=0)
        return cls(max_bin_len=max(biggest, 1), max_str_len=4096, max_map_len=1024)

    def unpacker_kwargs(self) -> dict[str, int]:
        """msgpack's own caps; ext types get none (they are refused)."""
        return {"max_bin_len": self.max_bin_len, "max_str_len": self.max_str_len,
                "max_array_len": self.max_array_len, "max_map_len": self.max_map_len, "max_ext_len": 0}


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape one tensor must have."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """Return the wire map of one tensor: {name, dtype, shape, data}."""
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype.name not in WIRE_DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {arr.dtype} can't be sent (allowed: {', '.join(WIRE_DTYPES)})")
    shape = list(arr.shape)  # before ascontiguousarray, which turns a 0-d array into shape (1,)
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
    # A view of the array's bytes, not a copy: msgpack packs it as bin in one pass (a 0.9 MB tensor: 0.03 ms
    # instead of 1.1 ms with tobytes()). The array must not change before the map is packed.
    return {"name": name, "dtype": dtype.name, "shape": shape, "data": arr.reshape(-1).data.cast("B")}


def decode_tensor(item: Any) -> tuple[str, np.ndarray]:
    """Decode one wire tensor map into (name, read-only array viewing the payload)."""
    if not isinstance(item, dict):
        raise DecodeError(f"tensor entry is {type(item).__name__}, expected a map")
    missing = [k for k in ("name", "dtype", "shape", "data") if k not in item]
    if missing:
        label = f"tensor {wire_repr(item['name'])}" if isinstance(item.get("name"), str) else "tensor entry"
        raise DecodeError(f"{label} lacks {', '.join(missing)}")
    name, dtype, shape, data = item["name"], item["dtype"], item["shape"], item["data"]
    if not isinstance(name, str):
        raise DecodeError("tensor name is not a string")
    label = f"tensor {wire_repr(name)}"
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:  # a list or map dtype would be unhashable
        raise DecodeError(f"{label}: unsupported dtype {wire_repr(dtype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise DecodeError(f"{label}: bad shape {wire_repr(shape)}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{label}: data is {type(data).__name__}, expected bytes")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    count = math.prod(shape)  # Python ints: no int64 overflow on absurd dims
    if count * np_dtype.itemsize != len(data):
        raise DecodeError(
            f"{label}: {len(data)} bytes do not hold shape {wire_repr(tuple(shape))} of {dtype}"
            f" ({wire_repr(count * np_dtype.itemsize)} bytes expected)"
        )
    try:
        array = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    except ValueError as exc:  # zero-size but absurd dims: numpy says "array is too big"
        raise DecodeError(f"{label}: bad shape {wire_repr(shape)}: {exc}") from None
    return name, array


def encode_tensors(named: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    return [encode_tensor(name, arr) for name, arr in named]


def decode_tensors(items: Any) -> list[tuple[str, np.ndarray]]:
    if not isinstance(items, list):
        raise DecodeError(f"tensors is {type(items).__name__}, expected a list")
    return [decode_tensor(item) for item in items]


def check_tensors(received: Sequence[tuple[str, Any]], expected: Sequence[TensorSpec]) -> None:
    """Raise DecodeError naming the first tensor whose name, dtype or shape differs from `expected`. A received
    tensor is an array, or anything with a numpy `dtype` and a `shape` (an encodings.Encoded)."""
    if len(received) != len(expected):
        raise DecodeError(f"{len(received)} tensors received, the model has {len(expected)}", "bad_tensors")
    for (name, arr), spec in zip(received, expected):
        if name != spec.name:
            raise DecodeError(f"tensor {wire_repr(name)} where the model has {spec.name!r}", "bad_tensors")
        if arr.dtype.name != spec.dtype:
            raise DecodeError(f"tensor {wire_repr(name)}: dtype {arr.dtype.name}, the model has {spec.dtype}",
                              "bad_tensors")
        if tuple(arr.shape) != tuple(spec.shape):
            raise DecodeError(f"tensor {wire_repr(name)}: shape {tuple(arr.shape)}, the model has "
                              f"{tuple(spec.shape)}", "bad_tensors")


def pack(message: dict[str, Any]) -> bytes:
    """Serialize a message map with msgpack (bin type for bytes, str for text)."""
    return msgpack.packb(message, use_bin_type=True)


def unpack(payload: bytes | bytearray | memoryview, max_size: int = 0,
           limits: DecodeLimits | None = None) -> dict[str, Any]:
    """Parse a msgpack payload into a map; DecodeError on anything else. No pickle, no ext types.

    `limits` (default: DecodeLimits.for_size(max_size or the payload's length)) bound every length and the number
    of objects; a payload beyond them is refused as `too_large` as soon as msgpack reads the offending header."""
    if max_size and len(payload) > max_size:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {max_size} bytes", "too_large")
    limits = limits or DecodeLimits.for_size(max_size or len(payload))
    budget = _ObjectBudget(min(limits.max_objects, OBJECT_FLOOR + len(payload) // BYTES_PER_OBJECT))
    try:
        message = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext,
            list_hook=budget.list_done, object_hook=budget.map_done, **limits.unpacker_kwargs(),
        )
    except DecodeError:
        raise
    except ValueError as exc:  # msgpack's "N exceeds max_xxx_len(M)"; also ExtraData, FormatError...
        text = str(exc)
        if "max_ext_len" in text:
            raise DecodeError("msgpack extension types are not allowed") from None
        reason = "too_large" if "exceeds max_" in text else "malformed"
        raise DecodeError(f"{'payload over the decode limits' if reason == 'too_large' else 'malformed msgpack'}: "
                          f"{type(exc).__name__}: {clip_text(text, 200)}", reason) from None
    except Exception as exc:  # msgpack raises several types: StackError, TypeError (unhashable key)...
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {clip_text(str(exc), 200)}") from None
    if not isinstance(message, dict):
        raise DecodeError(f"payload is a msgpack {type(message).__name__}, expected a map")
    _check_structure(message, limits.max_nesting)
    return message


class _ObjectBudget:
    """Counts decoded objects from msgpack's hooks (called as each array or map is complete) and stops the
    decode once there are too many: every element is counted once, in the container that holds it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def list_done(self, items: list[Any]) -> list[Any]:
        self.count += 1 + len(items)
        if self.count > self.limit:
            self._exceeded()
        return items

    def map_done(self, items: dict[Any, Any]) -> dict[Any, Any]:
        self.count += 1 + 2 * len(items)
        if self.count > self.limit:
            self._exceeded()
        return items

    def _exceeded(self) -> None:
        raise DecodeError(f"payload holds more than {self.limit} msgpack objects", "too_large")


def _check_structure(message: Any, max_nesting: int = MAX_NESTING) -> None:
    """Reject timestamps and deep nesting, iteratively.

    msgpack decodes ext type -1 to a Timestamp without calling ext_hook (max_ext_len=0 refuses it first; this
    stays as a second check); nesting deeper than `max_nesting` would make str()/repr() of a field raise
    RecursionError later."""
    stack = [(message, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (dict, list)):
            if depth > max_nesting:
                raise DecodeError(f"payload nests maps/arrays deeper than {max_nesting} levels")
            stack.extend((child, depth + 1) for child in (obj.values() if isinstance(obj, dict) else obj))
        elif isinstance(obj, msgpack.Timestamp):
            raise DecodeError("msgpack extension type -1 (timestamp) is not allowed")


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")
