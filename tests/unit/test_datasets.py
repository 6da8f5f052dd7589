"""Tests for federation.learning.datasets: idx, npz and CIFAR files, image folders, and the not-found message.

Local data is written into tmp_path; the Keras cache, Debian folder and download are redirected."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from federation.learning import datasets
from federation.learning.datasets import (
    DatasetError,
    DatasetNotFoundError,
    candidate_locations,
    class_names_for,
    load_dataset,
    load_image_folder,
)

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


def test_fashion_mnist_from_gzipped_idx_files_in_data_dir(offline: Path) -> None:
    data_dir = offline / "data"
    arrays = write_idx_set(data_dir)
    dataset = load_dataset("fashion_mnist", data_dir=data_dir)
    assert dataset.name == "fashion_mnist"
    assert dataset.x_train.shape == (6, 5, 4, 1) and dataset.x_test.shape == (3, 5, 4, 1)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64
    assert np.array_equal(dataset.x_train[..., 0], arrays["x_train"])
    assert np.array_equal(dataset.y_test, arrays["y_test"])
    assert dataset.input_shape == (5, 4, 1) and dataset.num_classes == 10
    assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[-1] == "Ankle boot"


@pytest.mark.parametrize(("name", "subfolder"), [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")])
def test_uncompressed_idx_files_in_a_named_subfolder(offline: Path, name: str, subfolder: str) -> None:
    arrays = write_idx_set(offline / "data" / subfolder, compress=False)
    dataset = load_dataset(name, data_dir=offline / "data")
    assert np.array_equal(dataset.x_test[..., 0], arrays["x_test"])
    assert dataset.class_names == class_names_for(name)


def test_bad_idx_magic_names_the_file(offline: Path) -> None:
    write_idx_set(offline)
    bad = offline / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros(6, dtype=np.uint8), magic=0x0803)
    with pytest.raises(DatasetError, match="magic") as error:
        load_dataset("mnist", data_dir=offline)
    assert str(bad) in str(error.value)


def test_truncated_idx_file_names_the_file(offline: Path) -> None:
    write_idx_set(offline)
    bad = offline / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "rb") as stream:
        content = stream.read()
    with gzip.open(bad, "wb") as stream:
        stream.write(content[:-7])
    with pytest.raises(DatasetError, match="truncated") as error:
        load_dataset("mnist", data_dir=offline)
    assert str(bad) in str(error.value)


def test_image_and_label_counts_must_agree(offline: Path) -> None:
    write_idx_set(offline)
    write_idx(offline / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DatasetError, match="6 images"):
        load_dataset("mnist", data_dir=offline)


def test_mnist_npz_in_the_keras_cache(offline: Path) -> None:
    cache = offline / "keras-home" / "datasets"
    cache.mkdir(parents=True)
    x_train, y_train = fake_split(4, 3)
    x_test, y_test = fake_split(2, 4)
    np.savez(cache / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    dataset = load_dataset("mnist")
    assert dataset.x_train.shape == (4, 5, 4, 1)
    assert np.array_equal(dataset.y_train, y_train)
    assert dataset.class_names == tuple("0123456789")


def test_cifar10_batches_in_the_keras3_cache_layout(offline: Path) -> None:
    folder = offline / "keras-home" / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    planes = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    planes[:, 0, 0, 1] = 200  # red channel of the pixel at row 0, column 1
    for number in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{number}", planes.reshape(2, -1), [number, 9])
    write_cifar_batch(folder / "test_batch", planes.reshape(2, -1), [0, 1])
    dataset = load_dataset("cifar10")
    assert dataset.x_train.shape == (10, 32, 32, 3) and dataset.x_test.shape == (2, 32, 32, 3)
    assert dataset.x_train.flags.c_contiguous
    assert dataset.x_train[0, 0, 1, 0] == 200 and dataset.x_train[0, 0, 1, 1] == 0
    assert dataset.y_train.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert dataset.class_names[0] == "airplane" and dataset.class_names[-1] == "truck"


def test_cifar_batch_with_foreign_pickle_globals_is_refused(offline: Path) -> None:
    folder = offline / "data" / "cifar-10-batches-py"
    for name in [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, np.zeros((1, 3072), dtype=np.uint8), [0])
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": [0]}, protocol=4))
    with pytest.raises(DatasetError, match="refusing") as error:
        load_dataset("cifar10", data_dir=offline / "data")
    assert "test_batch" in str(error.value)


# --- not found -----------------------------------------------------------------------------------


def test_missing_fashion_mnist_lists_files_places_and_the_fix(offline: Path) -> None:
    data_dir = offline / "empty"
    data_dir.mkdir()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion_mnist", data_dir=data_dir)
    message = str(error.value)
    for name in IDX_NAMES:
        assert f"{name}.gz" in message
    for location in candidate_locations("fashion_mnist", data_dir):
        assert str(location.directory) in message
    assert str(data_dir) in message
    assert str(offline / "keras-home" / "datasets" / "fashion-mnist") in message
    assert str(offline / "debian" / "fashion-mnist") in message
    assert "apt install dataset-fashion-mnist" in message
    assert "no network in tests" in message
    assert isinstance(error.value.__cause__, DownloadBlocked)


@pytest.mark.parametrize(("name", "wanted"), [("mnist", "mnist.npz"), ("cifar10", "data_batch_1")])
def test_missing_mnist_and_cifar_name_their_files(offline: Path, name: str, wanted: str) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, data_dir=offline / "nowhere")
    message = str(error.value)
    assert wanted in message
    assert str(offline / "nowhere") in message and "no such folder" in message
    assert str(offline / "keras-home" / "datasets") in message


def test_unknown_name_that_is_no_folder(offline: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="neither a built-in"):
        load_dataset(str(offline / "no-such-folder"))


def test_search_order_is_data_dir_then_keras_cache_then_debian(offline: Path) -> None:
    sources = [location.source for location in candidate_locations("fashion_mnist", offline)]
    assert sources[0] == "data_dir"
    assert sources.index("Keras cache") > sources.index("data_dir")
    assert sources[-1] == "Debian package dataset-fashion-mnist"


def test_class_names_for_builtins() -> None:
    assert class_names_for("fashion-mnist")[6] == "Shirt"
    assert class_names_for("cifar10")[3] == "cat"
    with pytest.raises(ValueError, match="'imagenet'"):
        class_names_for("imagenet")


# --- image folders -------------------------------------------------------------------------------


def test_image_folder_with_train_and_test(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_image(root / "train" / "dog" / "b.png", rgb(30))
    write_image(root / "train" / "cat" / "b.png", rgb(20))
    write_image(root / "train" / "cat" / "a.png", rgb(10))
    write_image(root / "test" / "dog" / "x.png", rgb(40))
    write_image(root / "test" / "cat" / "x.png", rgb(50))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    dataset = load_image_folder(root)
    assert dataset.name == "pets"
    assert dataset.class_names == ("cat", "dog")
    assert dataset.x_train.shape == (3, 5, 6, 3) and dataset.x_test.shape == (2, 5, 6, 3)
    assert dataset.y_train.tolist() == [0, 0, 1] and dataset.y_test.tolist() == [0, 1]
    assert dataset.x_train[:, 0, 0, 0].tolist() == [10, 20, 30]  # sorted file order
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64


def test_image_folder_of_class_folders_only(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    for label in "0123":
        write_image(root / label / "img.png", gray(int(label)))
    dataset = load_dataset(str(root))
    assert dataset.class_names == ("0", "1", "2", "3")
    assert dataset.x_train.shape == (4, 5, 6, 1)
    assert dataset.x_test.shape == (0, 5, 6, 1) and dataset.y_test.shape == (0,)
    assert dataset.y_train.tolist() == [0, 1, 2, 3]


def test_images_of_different_sizes_name_the_odd_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "1.png", gray(0))
    write_image(tmp_path / "b" / "2.png", gray(0, height=7))
    with pytest.raises(DatasetError) as error:
        load_image_folder(tmp_path)
    assert str(tmp_path / "b" / "2.png") in str(error.value)


def test_image_size_resizes_to_height_and_width(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "1.png", rgb(0))
    write_image(tmp_path / "b" / "2.png", rgb(0, height=9, width=3))
    dataset = load_image_folder(tmp_path, image_size=(8, 4))
    assert dataset.x_train.shape == (2, 8, 4, 3)


def test_color_modes(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "1.png", gray(100))
    write_image(tmp_path / "b" / "2.jpg", rgb(100))
    assert load_image_folder(tmp_path).input_shape == (5, 6, 3)  # mixed folder: RGB
    assert load_image_folder(tmp_path, color_mode="grayscale").input_shape == (5, 6, 1)
    with pytest.raises(ValueError, match="'cmyk'"):
        load_image_folder(tmp_path, color_mode="cmyk")


def test_folder_without_images_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as error:
        load_image_folder(tmp_path)
    assert str(tmp_path / "train") in str(error.value)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "1.png", gray(0))
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError) as error:
        load_image_folder(tmp_path)
    assert str(tmp_path / "a" / "2.png") in str(error.value)


def test_builtin_name_loads_an_image_folder_in_data_dir(offline: Path) -> None:
    write_image(offline / "data" / "cifar10" / "train" / "airplane" / "1.png", rgb(1, 32, 32))
    write_image(offline / "data" / "cifar10" / "test" / "airplane" / "1.png", rgb(2, 32, 32))
    dataset = load_dataset("cifar10", data_dir=offline / "data")
    assert dataset.name == "cifar10"
    assert dataset.x_train.shape == (1, 32, 32, 3) and dataset.x_test.shape == (1, 32, 32, 3)


def test_builtin_image_size_resizes(offline: Path) -> None:
    write_idx_set(offline / "data")
    dataset = load_dataset("mnist", data_dir=offline / "data", image_size=(8, 10))
    assert dataset.x_train.shape == (6, 8, 10, 1) and dataset.x_test.shape == (3, 8, 10, 1)


def test_dataset_rejects_inconsistent_arrays() -> None:
    images = np.zeros((3, 2, 2, 1), dtype=np.uint8)
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        datasets.Dataset("x", images, np.zeros(2, np.int64), images, np.zeros(3, np.int64), ("a",))


# --- the Debian package (installed here and in CI) -----------------------------------------------


def test_fashion_mnist_from_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert datasets.DEBIAN_FASHION_DIR.is_dir(), "install it: apt install dataset-fashion-mnist"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache, so the Debian folder is what loads

    def refuse_download(name: str) -> datasets.Dataset:
        raise AssertionError("must not download")

    monkeypatch.setattr(datasets, "download_with_keras", refuse_download)
    dataset = load_dataset("fashion_mnist")
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_test.shape == (10000, 28, 28, 1)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64
    assert sorted(np.unique(dataset.y_train).tolist()) == list(range(10))
    assert dataset.y_train[:5].tolist() == [9, 0, 0, 3, 0]
