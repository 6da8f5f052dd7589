"""Turn image files, image bytes and .npy/.npz arrays into the raw-pixel batches a deployed model takes.

Images are read with Pillow (imported only when an image is given); sizes are checked from headers before decoding."""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import numpy.lib.format as npy_format

from federation.errors import FedmqError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
IMAGE_KEYS = ("x", "images", "x_test", "x_train")
LABEL_KEYS = ("y", "labels", "y_test", "y_train")
# An image may have this many pixels, or 16 times the model's input if that is more: decoded as RGBA, 16 MiB.
MAX_IMAGE_PIXELS = 2048 * 2048
MAX_ARRAY_BYTES = 16 * 1024 * 1024  # array data read from one .npy/.npz input, after decompression
MAX_NPZ_MEMBERS = 64
_CENTRAL_DIRECTORY_ENTRY = b"PK\x01\x02"


class InputError(FedmqError, ValueError):
    """An input that can't be turned into images for this model; the message names it and says why."""


class InputTooLarge(InputError):
    """An input beyond a size cap (pixels, decompressed bytes), found before it was decoded (HTTP 413)."""


def pixel_cap(shape: tuple[int, ...]) -> int:
    """How many pixels an image for a model taking `shape` (H, W, C) may have."""
    height, width, _ = _hwc(shape)
    return max(MAX_IMAGE_PIXELS, 16 * height * width)


@dataclass(frozen=True)
class Batch:
    """Images shaped [N, H, W, C] (raw pixel values), a name per image, and labels when the input had them."""

    images: np.ndarray
    names: list[str]
    labels: np.ndarray | None = None


def decode_image(data: bytes, shape: tuple[int, ...], name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """One encoded image (PNG, JPEG, BMP, ...) as a uint8 array of `shape` (H, W, C), resized if needed.

    Its size is read from its header and checked against `max_pixels` (default pixel_cap(shape)) before any pixel is
    decoded: a 20 kB PNG can hold 13,000 x 13,000 pixels."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(f"{name}: reading images needs Pillow (pip install Pillow)") from None
    height, width, channels = _hwc(shape)
    if channels not in (1, 3):
        raise InputError(f"{name}: the model takes {channels} channels; images give 1 or 3")
    cap = max_pixels or pixel_cap(shape)
    Image.MAX_IMAGE_PIXELS = cap  # Pillow checks it in open(), from the header; its warning is made an error
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    image: Image.Image  # opened as an ImageFile, then converted and resized
    try:
        with Image.open(io.BytesIO(data)) as image:
            columns, rows = image.size
            if columns * rows > cap:
                raise InputTooLarge(f"{name}: an image of {columns} x {rows} pixels; the limit is {cap} pixels "
                                    f"(e.g. {math.isqrt(cap)} x {math.isqrt(cap)})")
            mode = "L" if channels == 1 else "RGB"
            image.draft(mode, (width, height))  # JPEG: decode at a reduced scale when that is enough
            image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputTooLarge(f"{name}: {str(exc).split(', could be')[0]} (too many pixels)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image (PNG, JPEG, BMP, GIF, TIFF, WebP...)") from None
    except Exception as exc:  # a damaged file: Pillow raises OSError, ValueError, SyntaxError, EOFError...
        raise InputError(f"{name}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return array.reshape(height, width, channels)


def decode_array(data: bytes, shape: tuple[int, ...], name: str = "array",
                 max_bytes: int = MAX_ARRAY_BYTES) -> Batch:
    """A .npy or .npz payload as a batch for a model taking `shape` (H, W, C) inputs.

    Array sizes are read from the .npy headers (and the .npz directory) and checked against `max_bytes` before any
    data is inflated or copied; arrays of Python objects (pickles) are refused."""
    if data.startswith(NPY_MAGIC):
        array = _read_npy(io.BytesIO(data), name, max_bytes, len(data), data)
        images = as_batch(array, shape, name)
        return Batch(images, [name] if len(images) == 1 else [f"{name}[{i}]" for i in range(len(images))])
    if data.count(_CENTRAL_DIRECTORY_ENTRY) > MAX_NPZ_MEMBERS:
        raise InputError(f"{name}: a .npz of more than {MAX_NPZ_MEMBERS} arrays")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{name}: not a readable .npy/.npz file ({exc})") from None
    with archive:
        members = {n.removesuffix(".npy"): archive.getinfo(n) for n in archive.namelist()}
        key = next((k for k in IMAGE_KEYS if k in members), None)
        if key is None:
            raise InputError(f"{name}: no image array in it; name it one of {', '.join(IMAGE_KEYS)} "
                             f"(it has {', '.join(list(members)[:10]) or 'nothing'})")
        raw = _read_member(archive, members[key], f"{name}[{key}]", max_bytes)
        images = as_batch(raw, shape, f"{name}[{key}]")
        label_key = next((k for k in LABEL_KEYS if k in members), None)
        labels = None
        if label_key is not None:
            labels = _read_member(archive, members[label_key], f"{name}[{label_key}]",
                                  max_bytes - raw.nbytes).reshape(-1)
            if len(labels) != len(images):
                raise InputError(f"{name}: {len(images)} images but {len(labels)} labels in {label_key!r}")
    return Batch(images, [f"{name}[{i}]" for i in range(len(images))], labels)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, max_bytes: int) -> np.ndarray:
    try:
        with archive.open(info) as member:
            return _read_npy(member, name, max_bytes, info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:  # a bad CRC, an unknown compression
        raise InputError(f"{name}: not a readable .npy member ({exc})") from None


def _read_npy(fp: IO[bytes], name: str, max_bytes: int, available: int, buffer: bytes | None = None) -> np.ndarray:
    """The array of a .npy stream, its size checked from its header first; `available`: the stream's length."""
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version} is not read here")
    except (ValueError, EOFError) as exc:
        raise InputError(f"{name}: not a readable .npy file ({str(exc)[:200]})") from None
    if dtype.hasobject:
        raise InputError(f"{name}: an array of Python objects (a pickle); only numbers are read")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise InputTooLarge(f"{name}: an array of shape {shape} and dtype {dtype} is {nbytes} bytes; the limit is "
                            f"{max_bytes}")
    offset = fp.tell()
    if nbytes > available - offset:
        raise InputError(f"{name}: its header announces {nbytes} bytes of data, it holds {available - offset}")
    if buffer is not None:  # a whole .npy in memory: view it, don't copy it
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    else:
        raw = fp.read(nbytes)
        if len(raw) != nbytes:
            raise InputError(f"{name}: truncated: {len(raw)} of {nbytes} bytes of data")
        array = np.frombuffer(raw, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def as_batch(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """[H, W], [H, W, C], [N, H, W] or [N, H, W, C] pixel values as [N, H, W, C]; InputError on other shapes.
    For a model whose input is not an image (a table row [F], a window [T, F]): one input or [N, *shape]."""
    a = np.asarray(array)
    if len(shape) != 3:
        return _as_feature_batch(a, tuple(shape), name)
    height, width, channels = _hwc(shape)
    if a.dtype.kind not in "uif":
        raise InputError(f"{name}: array of {a.dtype} is not pixel values")
    if (a.shape == (height, width) and channels == 1) or a.shape == (height, width, channels):
        return a.reshape(1, height, width, channels)
    if (a.ndim == 3 and a.shape[1:] == (height, width) and channels == 1) or (
            a.ndim == 4 and a.shape[1:] == (height, width, channels)):
        return a.reshape(len(a), height, width, channels)
    raise InputError(f"{name}: array of shape {a.shape} does not hold images of shape {(height, width, channels)}")


def _as_feature_batch(a: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Feature values of one input shaped `shape`, or of N shaped [N, *shape], as [N, *shape]."""
    if a.dtype.kind not in "uif":
        raise InputError(f"{name}: array of {a.dtype} is not numbers")
    if a.shape == shape:
        return a.reshape(1, *shape)
    if a.ndim == len(shape) + 1 and a.shape[1:] == shape:
        return a
    raise InputError(f"{name}: array of shape {a.shape} does not hold inputs of shape {shape} (one, or [N, "
                     f"{', '.join(map(str, shape))}])")


def load_inputs(paths: list[Path], shape: tuple[int, ...], max_array_bytes: int = 1 << 31) -> Batch:
    """Read image files and .npy/.npz files into one batch, in order (local files: a higher array cap)."""
    images: list[np.ndarray] = []
    names: list[str] = []
    labels: list[np.ndarray | None] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: can't read it ({exc.strerror or exc})") from None
        if data.startswith(NPY_MAGIC) or data.startswith(ZIP_MAGIC):
            batch = decode_array(data, shape, str(path), max_array_bytes)
            images.append(batch.images)
            names += batch.names
            labels.append(batch.labels)
        else:
            images.append(decode_image(data, shape, str(path))[None])
            names.append(str(path))
            labels.append(None)
    if not images:
        raise InputError("no inputs given")
    all_labels = None
    if all(lab is not None for lab in labels):
        all_labels = np.concatenate([lab for lab in labels if lab is not None])
    return Batch(np.concatenate(images), names, all_labels)


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 2:
        return int(shape[0]), int(shape[1]), 1
    if len(shape) != 3:
        raise InputError(f"the model takes inputs of shape {tuple(shape)}, not images")
    return int(shape[0]), int(shape[1]), int(shape[2])

