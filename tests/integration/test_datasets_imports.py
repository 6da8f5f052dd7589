"""Tests for federation.learning.datasets: idx, npz and CIFAR files, image folders, and the not-found message.

Local data is written into tmp_path; the Keras cache, Debian folder and download are redirected.

The tests of test_datasets.py that start processes or import TensorFlow (the unit tier does neither)."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from federation.learning import datasets
from tests.support import REPO_ROOT

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DownloadBlocked(RuntimeError):
    pass


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Keras cache and the Debian folder into tmp_path and make the download fail."""

    def refuse_download(name: str) -> datasets.Dataset:
        raise DownloadBlocked(f"no network in tests ({name})")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", tmp_path / "debian" / "fashion-mnist")
    monkeypatch.setattr(datasets, "download_with_keras", refuse_download)
    return tmp_path


# --- helpers writing data files ----------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = True) -> None:
    magic = magic if magic is not None else (0x0803 if array.ndim == 3 else 0x0801)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 5, 4), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def write_idx_set(directory: Path, compress: bool = True) -> dict[str, np.ndarray]:
    """Four idx files of 5x4-pixel images (6 train, 3 test); returns what they hold."""
    (x_train, y_train), (x_test, y_test) = fake_split(6, 1), fake_split(3, 2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    suffix = ".gz" if compress else ""
    for name, array in zip(IDX_NAMES, arrays.values()):
        write_idx(directory / f"{name}{suffix}", array, compress=compress)
    return arrays


def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def rgb(value: int, height: int = 5, width: int = 6) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def gray(value: int, height: int = 5, width: int = 6) -> np.ndarray:
    return np.full((height, width), value, dtype=np.uint8)


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"test", b"labels": labels, b"data": data}
    path.write_bytes(pickle.dumps(batch, protocol=4))


# --- idx, npz, CIFAR -----------------------------------------------------------------------------


# --- not found -----------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_keras() -> None:
    code = "import sys, federation.learning.datasets; print('keras' in sys.modules or 'tensorflow' in sys.modules)"
    root = REPO_ROOT
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- image folders -------------------------------------------------------------------------------


# --- the Debian package (installed here and in CI) -----------------------------------------------
