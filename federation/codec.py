"""Tensor and payload encoding for the wire: msgpack maps, tensors as raw little-endian bytes.

Decoding is zero-copy: arrays are `np.frombuffer` views over the received payload."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

# dtype names allowed on the wire (numpy names; bytes are always little-endian).
WIRE_DTYPES: tuple[str, ...] = (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)
MAX_TENSOR_DIMS = 8
MAX_NESTING = 32  # maps/arrays inside each other; real messages use about 4


class DecodeError(ValueError):
    """A payload that can't be decoded or validated; the text says why, `reason` is a short code."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


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
    return {"name": name, "dtype": dtype.name, "shape": shape, "data": arr.tobytes()}


def decode_tensor(item: Any) -> tuple[str, np.ndarray]:
    """Decode one wire tensor map into (name, read-only array viewing the payload)."""
    if not isinstance(item, dict):
        raise DecodeError(f"tensor entry is {type(item).__name__}, expected a map")
    missing = [k for k in ("name", "dtype", "shape", "data") if k not in item]
    if missing:
        label = f"tensor {item['name']!r}" if isinstance(item.get("name"), str) else "tensor entry"
        raise DecodeError(f"{label} lacks {', '.join(missing)}")
    name, dtype, shape, data = item["name"], item["dtype"], item["shape"], item["data"]
    if not isinstance(name, str):
        raise DecodeError("tensor name is not a string")
    if dtype not in WIRE_DTYPES:
        raise DecodeError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise DecodeError(f"tensor {name!r}: bad shape {shape!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"tensor {name!r}: data is {type(data).__name__}, expected bytes")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    count = math.prod(shape)  # Python ints: no int64 overflow on absurd dims
    if count * np_dtype.itemsize != len(data):
        raise DecodeError(
            f"tensor {name!r}: {len(data)} bytes do not hold shape {tuple(shape)} of {dtype}"
            f" ({count * np_dtype.itemsize} bytes expected)"
        )
    try:
        array = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    except ValueError as exc:  # zero-size but absurd dims: numpy says "array is too big"
        raise DecodeError(f"tensor {name!r}: bad shape {shape!r}: {exc}") from None
    return name, array


def encode_tensors(named: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    return [encode_tensor(name, arr) for name, arr in named]


def decode_tensors(items: Any) -> list[tuple[str, np.ndarray]]:
    if not isinstance(items, list):
        raise DecodeError(f"tensors is {type(items).__name__}, expected a list")
    return [decode_tensor(item) for item in items]


def check_tensors(received: Sequence[tuple[str, np.ndarray]], expected: Sequence[TensorSpec]) -> None:
    """Raise DecodeError naming the first tensor whose name, dtype or shape differs from `expected`."""
    if len(received) != len(expected):
        raise DecodeError(f"{len(received)} tensors received, the model has {len(expected)}", "bad_tensors")
    for (name, arr), spec in zip(received, expected):
        if name != spec.name:
            raise DecodeError(f"tensor {name!r} where the model has {spec.name!r}", "bad_tensors")
        if arr.dtype.name != spec.dtype:
            raise DecodeError(f"tensor {name!r}: dtype {arr.dtype.name}, the model has {spec.dtype}", "bad_tensors")
        if tuple(arr.shape) != tuple(spec.shape):
            raise DecodeError(f"tensor {name!r}: shape {tuple(arr.shape)}, the model has {tuple(spec.shape)}",
                              "bad_tensors")


def pack(message: dict[str, Any]) -> bytes:
    """Serialize a message map with msgpack (bin type for bytes, str for text)."""
    return msgpack.packb(message, use_bin_type=True)


def unpack(payload: bytes | bytearray | memoryview, max_size: int = 0) -> dict[str, Any]:
    """Parse a msgpack payload into a map; DecodeError on anything else. No pickle, no ext types."""
    if max_size and len(payload) > max_size:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {max_size} bytes", "too_large")
    try:
        message = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True,
            ext_hook=_reject_ext,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several types: ExtraData, FormatError, ValueError...
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict):
        raise DecodeError(f"payload is a msgpack {type(message).__name__}, expected a map")
    _check_structure(message)
    return message


def _check_structure(message: Any) -> None:
    """Reject timestamps and deep nesting, iteratively.

    msgpack decodes ext type -1 to a Timestamp without calling ext_hook, so it is rejected here like other ext
    types; nesting deeper than MAX_NESTING would make str()/repr() of a field raise RecursionError later."""
    stack = [(message, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (dict, list)):
            if depth > MAX_NESTING:
                raise DecodeError(f"payload nests maps/arrays deeper than {MAX_NESTING} levels")
            stack.extend((child, depth + 1) for child in (obj.values() if isinstance(obj, dict) else obj))
        elif isinstance(obj, msgpack.Timestamp):
            raise DecodeError("msgpack extension type -1 (timestamp) is not allowed")


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")
