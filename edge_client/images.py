"""Turn image files, image bytes and .npy/.npz arrays into the raw-pixel batches a deployed model takes.

Images are read with Pillow (imported only when an image is given), converted to the model's channels and size."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
IMAGE_KEYS = ("x", "images", "x_test", "x_train")
LABEL_KEYS = ("y", "labels", "y_test", "y_train")


class InputError(ValueError):
    """An input that can't be turned into images for this model; the message names it and says why."""


@dataclass(frozen=True)
class Batch:
    """Images shaped [N, H, W, C] (raw pixel values), a name per image, and labels when the input had them."""

    images: np.ndarray
    names: list[str]
    labels: np.ndarray | None = None


def decode_image(data: bytes, shape: tuple[int, ...], name: str = "image") -> np.ndarray:
    """One encoded image (PNG, JPEG, BMP, ...) as a uint8 array of `shape` (H, W, C), resized if needed."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(f"{name}: reading images needs Pillow (pip install Pillow)") from None
    height, width, channels = _hwc(shape)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{name}: not a readable image ({exc})") from None
    if channels not in (1, 3):
        raise InputError(f"{name}: the model takes {channels} channels; images give 1 or 3")
    return array.reshape(height, width, channels)


def decode_array(data: bytes, shape: tuple[int, ...], name: str = "array") -> Batch:
    """A .npy or .npz payload as a batch for a model taking `shape` (H, W, C) inputs."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{name}: not a readable .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        images = as_batch(loaded, shape, name)
        return Batch(images, [name] if len(images) == 1 else [f"{name}[{i}]" for i in range(len(images))])
    with loaded:
        key = next((k for k in IMAGE_KEYS if k in loaded.files), None)
        if key is None:
            raise InputError(f"{name}: no image array in it; name it one of {', '.join(IMAGE_KEYS)} "
                             f"(it has {', '.join(loaded.files) or 'nothing'})")
        images = as_batch(loaded[key], shape, f"{name}[{key}]")
        label_key = next((k for k in LABEL_KEYS if k in loaded.files), None)
        labels = None
        if label_key is not None:
            labels = np.asarray(loaded[label_key]).reshape(-1)
            if len(labels) != len(images):
                raise InputError(f"{name}: {len(images)} images but {len(labels)} labels in {label_key!r}")
    return Batch(images, [f"{name}[{i}]" for i in range(len(images))], labels)


def as_batch(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """[H, W], [H, W, C], [N, H, W] or [N, H, W, C] pixel values as [N, H, W, C]; InputError on other shapes."""
    height, width, channels = _hwc(shape)
    a = np.asarray(array)
    if a.dtype.kind not in "uif":
        raise InputError(f"{name}: array of {a.dtype} is not pixel values")
    if (a.shape == (height, width) and channels == 1) or a.shape == (height, width, channels):
        return a.reshape(1, height, width, channels)
    if (a.ndim == 3 and a.shape[1:] == (height, width) and channels == 1) or (
            a.ndim == 4 and a.shape[1:] == (height, width, channels)):
        return a.reshape(len(a), height, width, channels)
    raise InputError(f"{name}: array of shape {a.shape} does not hold images of shape {(height, width, channels)}")


def load_inputs(paths: list[Path], shape: tuple[int, ...]) -> Batch:
    """Read image files and .npy/.npz files into one batch, in order."""
    images: list[np.ndarray] = []
    names: list[str] = []
    labels: list[np.ndarray | None] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: can't read it ({exc.strerror or exc})") from None
        if data.startswith(NPY_MAGIC) or data.startswith(ZIP_MAGIC):
            batch = decode_array(data, shape, str(path))
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

