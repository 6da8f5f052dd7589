"""Training data: the built-in Fashion-MNIST, MNIST and CIFAR-10 sets, a folder of images, or (own_data.py) a CSV
table, a CSV time series or an .npz file.

Images come back as uint8 NHWC with int64 labels (rescaling to [0, 1] is the model's job); tables as float32."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Sequence
from io import BufferedIOBase
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from federation.errors import FedmqError

if TYPE_CHECKING:
    from federation.learning.own_data import TableOptions
    from federation.protocol.data_schema import DataSchema

LOG = logging.getLogger(__name__)

BUILTIN_DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist", "cifar10")

_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip

# The four idx files of MNIST and Fashion-MNIST, by the Dataset field they fill.
IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte idx files, by number of dimensions
MNIST_NPZ = "mnist.npz"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
COLOR_MODES = ("auto", "grayscale", "rgb")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA"})

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"

# Sub-folders searched, in order, under data_dir and under the Keras cache ("" is the folder itself).
_DATA_DIR_SUBDIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("", "fashion_mnist", "fashion-mnist"),
    "mnist": ("", "mnist"),
    "cifar10": ("", CIFAR_DIR, "cifar10", f"cifar10/{CIFAR_DIR}"),
}
_KERAS_CACHE_SUBDIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("fashion-mnist",),
    "mnist": ("",),
    # Keras 2 extracted to cifar-10-batches-py/; Keras 3 to cifar-10-batches-py-target/cifar-10-batches-py/.
    "cifar10": (CIFAR_DIR, f"{CIFAR_DIR}-target/{CIFAR_DIR}"),
}


class DatasetNotFoundError(FedmqError, FileNotFoundError):
    """No copy of the data set was found; the message says where it looked and how to get one."""


class DatasetError(FedmqError, ValueError):
    """The data set's files exist but are malformed; the message names the file or folder."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split: uint8 NHWC images (grayscale has C=1), or float32 rows (tables) or windows (series).

    Labels are 1-D int64 class indices (classification), or float32 targets (regression, no class names).
    `schema` (tables and series only) says how the examples were made from the CSV; devices get it on the wire."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    schema: DataSchema | None = None

    def __post_init__(self) -> None:
        _check_split(self, "train", self.x_train, self.y_train)
        _check_split(self, "test", self.x_test, self.y_test)
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DatasetError(
                f"data set {self.name!r}: test images are {self.x_test.shape[1:]}"
                f" but training images are {self.x_train.shape[1:]}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> str:
        """"regression" when the labels are float targets, else "classification"."""
        return "regression" if self.y_train.dtype.kind == "f" else "classification"


def _check_split(dataset: Dataset, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Raise DatasetError unless `images` is uint8 or float32 (N, ...) and `labels` match it: int64 class
    indices, or float32 targets when there are no class names (regression)."""
    where = f"data set {dataset.name!r}, {split} split"
    if images.ndim < 2 or images.dtype not in (np.uint8, np.float32):
        raise DatasetError(f"{where}: inputs must be uint8 or float32 (N, ...), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        what = "images" if images.ndim == 4 else "examples"
        raise DatasetError(f"{where}: {len(images)} {what} but {len(labels)} labels")
    if labels.dtype == np.float32 and not dataset.class_names and labels.ndim in (1, 2):
        return  # regression targets
    if labels.ndim != 1 or labels.dtype != np.int64:
        raise DatasetError(f"{where}: labels must be 1-D int64 (or float32 targets without class names), got "
                           f"{labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(dataset.class_names)):
        raise DatasetError(
            f"{where}: labels span {labels.min()}..{labels.max()}"
            f" but there are {len(dataset.class_names)} classes"
        )


@dataclass(frozen=True)
class SearchLocation:
    """One folder that load_dataset() searches for a built-in data set, and why it is searched."""

    directory: Path
    source: str
    allow_image_folder: bool = False


def class_names_for(name: str) -> tuple[str, ...]:
    """The class names of a built-in data set, in label order."""
    return _CLASS_NAMES[_require_builtin(name)]


def keras_cache_dir() -> Path:
    """Where Keras caches downloaded data sets: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    keras_home = os.environ.get("KERAS_HOME")
    base = Path(keras_home) if keras_home else Path.home() / ".keras"
    return base.expanduser() / "datasets"


def candidate_locations(name: str, data_dir: str | Path | None = None) -> list[SearchLocation]:
    """The folders searched for built-in data set `name`, in search order (first hit wins)."""
    key = _require_builtin(name)
    locations = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        locations += [SearchLocation(base / sub, "data_dir", True) for sub in _DATA_DIR_SUBDIRS[key]]
    cache = keras_cache_dir()
    locations += [SearchLocation(cache / sub, "Keras cache") for sub in _KERAS_CACHE_SUBDIRS[key]]
    if key == "fashion_mnist":
        locations.append(SearchLocation(DEBIAN_FASHION_DIR, f"Debian package {DEBIAN_FASHION_PACKAGE}"))
    return locations


def load_dataset(
    name: str, data_dir: str | Path | None = None, image_size: Sequence[int] | None = None,
    table: TableOptions | None = None, task: str = "classification",
) -> Dataset:
    """Load a built-in data set by name, an image folder by path, or a .csv / .npz file (own_data.py).

    Built-ins are searched in candidate_locations() and, failing those, downloaded by keras.datasets.
    A folder that happens to be called like a built-in is loaded as a folder when given as './mnist'.
    image_size is (height, width); images of another size are resized. `table` says how a CSV becomes examples
    and how much of a file is held out for testing; `task` how its labels are read (classes or float targets)."""
    from federation.learning import own_data  # here: own_data imports this module

    if own_data.is_own_data_file(name):
        return own_data.load_own_dataset(name, table or own_data.TableOptions(), task)
    size = _check_image_size(image_size)
    key = _builtin_key(name)
    if key is None:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"{name!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)})"
                f" nor an existing image folder"
            )
        return load_image_folder(folder, size)
    return _resized(_load_builtin(key, data_dir, size), size)


def download_with_keras(name: str) -> Dataset:
    """Load a built-in with keras.datasets: its own cache, else a download (slow: imports TensorFlow)."""
    import keras  # here, not at the top: loading the files on disk needs no TensorFlow (start-up speed)

    (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    return _builtin_dataset(name, x_train, y_train, x_test, y_test)


def _builtin_key(name: str) -> str | None:
    key = os.fspath(name).strip().lower().replace("-", "_")
    return key if key in BUILTIN_DATASETS else None


def _require_builtin(name: str) -> str:
    key = _builtin_key(name)
    if key is None:
        raise ValueError(f"{name!r} is not a built-in data set; built-ins: {', '.join(BUILTIN_DATASETS)}")
    return key


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, (int, np.integer)) and side > 0 for side in size):
        raise ValueError(f"image_size must be (height, width) with positive integers, got {image_size!r}")
    return int(size[0]), int(size[1])


def _load_builtin(key: str, data_dir: str | Path | None, image_size: tuple[int, int] | None) -> Dataset:
    locations = candidate_locations(key, data_dir)
    for location in locations:
        dataset = _load_from(key, location, image_size)
        if dataset is not None:
            LOG.info("loaded %s from %s (%s)", key, location.directory, location.source)
            return dataset
    LOG.info("%s not found locally; trying keras.datasets.%s.load_data()", key, key)
    try:
        return download_with_keras(key)
    except Exception as exc:  # any download failure means "not found"
        raise DatasetNotFoundError(_not_found_message(key, locations, exc)) from exc


def _load_from(key: str, location: SearchLocation, image_size: tuple[int, int] | None) -> Dataset | None:
    """The data set stored in `location` in any format this loader knows, or None."""
    directory = location.directory
    if not directory.is_dir():
        return None
    if key in ("fashion_mnist", "mnist") and _idx_paths(directory) is not None:
        return _load_idx(key, directory)
    if key == "mnist" and (directory / MNIST_NPZ).is_file():
        return _load_mnist_npz(directory / MNIST_NPZ)
    if key == "cifar10" and _has_cifar_batches(directory):
        return _load_cifar(directory)
    if location.allow_image_folder and _is_image_folder(directory):
        return replace(load_image_folder(directory, image_size), name=key)
    return None


def _builtin_dataset(
    key: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    return Dataset(
        name=key,
        x_train=_as_nhwc(x_train),
        y_train=_as_labels(y_train),
        x_test=_as_nhwc(x_test),
        y_test=_as_labels(y_test),
        class_names=_CLASS_NAMES[key],
    )


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images[..., np.newaxis] if images.ndim == 3 else images


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return labels.astype(np.int64)


# --- idx files (MNIST, Fashion-MNIST) ---------------------------------------------------------


def _idx_paths(directory: Path) -> dict[str, Path] | None:
    """The four idx files in `directory` (gzipped preferred), or None unless all four are there."""
    paths = {}
    for field_name, stem in IDX_FILES.items():
        found = [directory / name for name in (f"{stem}.gz", stem) if (directory / name).is_file()]
        if not found:
            return None
        paths[field_name] = found[0]
    return paths


def _load_idx(key: str, directory: Path) -> Dataset:
    paths = _idx_paths(directory)
    assert paths is not None
    arrays = {name: _read_idx(path, ndim=3 if name.startswith("x") else 1) for name, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise DatasetError(
                f"{paths[f'x_{split}']} holds {len(images)} images"
                f" but {paths[f'y_{split}']} holds {len(labels)} labels"
            )
    return _builtin_dataset(key, **arrays)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte idx file (optionally gzipped) of `ndim` dimensions into a uint8 array."""
    try:
        with _open_maybe_gzipped(path) as stream:
            shape = _read_idx_header(stream, path, ndim)
            array = np.empty(shape, dtype=np.uint8)
            _read_exactly(stream, array.data.cast("B"), path)
            if stream.read(1):
                raise DatasetError(f"{path}: more data than the header's shape {shape} announces")
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"could not read idx file {path}: {exc}") from exc
    return array


def _open_maybe_gzipped(path: Path) -> BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_idx_header(stream: BufferedIOBase, path: Path, ndim: int) -> tuple[int, ...]:
    header = stream.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: too short for an idx header")
    magic = int.from_bytes(header[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DatasetError(
            f"{path}: bad idx magic number 0x{magic:08x}, expected 0x{_IDX_MAGIC[ndim]:08x}"
            f" ({'images' if ndim == 3 else 'labels'})"
        )
    return tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _read_exactly(stream: BufferedIOBase, buffer: memoryview, path: Path) -> None:
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])
        if not count:
            raise DatasetError(f"{path}: truncated, {filled} of {len(buffer)} data bytes present")
        filled += count


# --- mnist.npz (Keras cache) --------------------------------------------------------------------


def _load_mnist_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in IDX_FILES}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        wanted = ", ".join(IDX_FILES)
        raise DatasetError(f"{path} is not a Keras mnist.npz holding {wanted}: {exc}") from exc
    if any(arrays[name].dtype != np.uint8 for name in ("x_train", "x_test")):
        raise DatasetError(f"{path}: images must be uint8")
    return _builtin_dataset("mnist", **arrays)


# --- CIFAR-10 python batches --------------------------------------------------------------------

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's ndarray unpickling helper, whatever its module
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a tampered batch file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def _has_cifar_batches(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH))


def _load_cifar(directory: Path) -> Dataset:
    train = [_read_cifar_batch(directory / name) for name in CIFAR_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(directory / CIFAR_TEST_BATCH)
    x_train = np.concatenate([rows for rows, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    return _builtin_dataset("cifar10", _cifar_nhwc(x_train), y_train, _cifar_nhwc(x_test), y_test)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (N, 3072) uint8 rows of channel planes, and int64 labels."""
    try:
        with path.open("rb") as stream:
            batch = _NumpyOnlyUnpickler(stream, encoding="bytes").load()
        rows = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or len(rows) != len(labels):
        raise DatasetError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels,"
            f" got {rows.dtype} {rows.shape} and {len(labels)} labels"
        )
    return rows, labels


def _cifar_nhwc(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows (R plane, G plane, B plane, each 32x32) as contiguous (N, 32, 32, 3) images."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# --- not found ---------------------------------------------------------------------------------


def _not_found_message(key: str, locations: list[SearchLocation], download_error: Exception) -> str:
    lines = [f"Data set {key!r} was not found. Looked for {_wanted_files(key)} in:"]
    lines += [f"  - {loc.directory} ({loc.source}{_absence_note(loc.directory)})" for loc in locations]
    if any(loc.allow_image_folder for loc in locations):
        lines.append("  (data_dir folders may also hold an image folder: <class>/*.png, or train/ and test/)")
    lines.append(f"Downloading it with keras.datasets.{key}.load_data() failed too: {download_error}")
    lines.append(_how_to_get(key))
    return "\n".join(lines)


def _wanted_files(key: str) -> str:
    idx_names = ", ".join(f"{stem}.gz" for stem in IDX_FILES.values())
    if key == "fashion_mnist":
        return f"the four files {idx_names} (or the same names without .gz)"
    if key == "mnist":
        return f"{MNIST_NPZ}, or the four files {idx_names} (or the same names without .gz)"
    batches = ", ".join((*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH))
    return f"the CIFAR-10 python batches {batches} (the contents of {CIFAR_DIR}/)"


def _absence_note(directory: Path) -> str:
    return "" if directory.is_dir() else ", no such folder"


def _how_to_get(key: str) -> str:
    cache = keras_cache_dir()
    if key == "fashion_mnist":
        return (
            f"To get it: 'apt install {DEBIAN_FASHION_PACKAGE}' (puts the files in {DEBIAN_FASHION_DIR}),"
            f" or copy the four files into {cache / 'fashion-mnist'} or into a folder passed as data_dir."
        )
    if key == "mnist":
        return (
            "To get it: download https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
            f" into {cache}, or copy the four idx files into a folder passed as data_dir."
        )
    return (
        "To get it: download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it"
        f" into {cache} (giving {cache / CIFAR_DIR}) or into a folder passed as data_dir."
    )


# --- image folders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """The common shape and Pillow mode that every image of a folder is decoded to."""

    height: int
    width: int
    mode: str  # "L" or "RGB"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def load_image_folder(
    path: str | Path, image_size: tuple[int, int] | None = None, color_mode: str = "auto"
) -> Dataset:
    """Load `path/train/<class>/*` and `path/test/<class>/*`, or `path/<class>/*` (all training, no test).

    Images must share one size unless image_size (height, width) is given. color_mode "auto" gives
    C=1 when every image is grayscale and C=3 otherwise; "grayscale" and "rgb" force it."""
    size = _check_image_size(image_size)
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {', '.join(COLOR_MODES)}, got {color_mode!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    train_dir, test_dir = _split_dirs(root)
    class_names = _folder_classes(train_dir, test_dir)
    train_files, y_train = _image_files(train_dir, class_names)
    test_files, y_test = _image_files(test_dir, class_names) if test_dir else ([], np.empty(0, np.int64))
    if not train_files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"image folder {train_dir} holds no images ({extensions}) in its class folders")
    geometry = _probe_geometry(train_files + test_files, size, color_mode)
    LOG.info("decoding %d images from %s", len(train_files) + len(test_files), root)
    return Dataset(
        name=root.resolve().name,
        x_train=_decode_images(train_files, geometry),
        y_train=y_train,
        x_test=_decode_images(test_files, geometry),
        y_test=y_test,
        class_names=class_names,
    )


def _is_image_folder(directory: Path) -> bool:
    """Whether `directory` looks like layout A (train/<class>/) or layout B (<class>/ with images)."""
    train = directory / "train"
    search = train if train.is_dir() else directory
    return any(_has_images(class_dir) for class_dir in _subdirs(search))


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    train, test = root / "train", root / "test"
    if train.is_dir():
        if not test.is_dir():
            LOG.warning("image folder %s has train/ but no test/; the test split is empty", root)
        return train, test if test.is_dir() else None
    if test.is_dir():
        raise DatasetError(f"image folder {root} has a test/ folder but no train/ folder")
    return root, None


def _folder_classes(train_dir: Path, test_dir: Path | None) -> tuple[str, ...]:
    train_classes = {sub.name for sub in _subdirs(train_dir)}
    test_classes = {sub.name for sub in _subdirs(test_dir)} if test_dir else set()
    if not train_classes:
        raise DatasetError(f"image folder {train_dir} has no class sub-folders ({train_dir}/<class>/)")
    for name in sorted(test_classes - train_classes):
        LOG.warning("class %r has test images in %s but no training images", name, test_dir)
    return tuple(sorted(train_classes | test_classes))


def _subdirs(directory: Path) -> list[Path]:
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def _has_images(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return any(_is_image_entry(entry) for entry in entries)


def _is_image_entry(entry: os.DirEntry[str]) -> bool:
    visible_file = entry.is_file() and not entry.name.startswith(".")
    return visible_file and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS


def _image_files(split_dir: Path, class_names: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    """The images of one split in sorted order, and their labels (indices into class_names)."""
    files: list[Path] = []
    labels: list[int] = []
    for label, class_name in enumerate(class_names):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            continue
        with os.scandir(class_dir) as entries:
            class_files = sorted(Path(entry.path) for entry in entries if _is_image_entry(entry))
        if not class_files:
            LOG.warning("class folder %s holds no images", class_dir)
        files += class_files
        labels += [label] * len(class_files)
    return files, np.asarray(labels, dtype=np.int64)


def _probe_geometry(files: list[Path], image_size: tuple[int, int] | None, color_mode: str) -> _Geometry:
    """Read image headers (cheap) to fix the output shape; DatasetError names the first odd-sized file."""
    forced_mode = {"grayscale": "L", "rgb": "RGB"}.get(color_mode)
    if image_size is not None and forced_mode is not None:
        return _Geometry(image_size[0], image_size[1], forced_mode)
    first_size: tuple[int, int] | None = None
    all_gray = True
    for path in files:
        size, mode = _image_header(path)
        if first_size is None:
            first_size = size
        elif image_size is None and size != first_size:
            raise DatasetError(
                f"image {path} is {size[0]}x{size[1]} but {files[0]} is {first_size[0]}x{first_size[1]}"
                " (width x height); all images must have one size, or pass image_size to resize them"
            )
        all_gray = all_gray and mode in _GRAYSCALE_MODES
    assert first_size is not None
    height, width = image_size if image_size is not None else (first_size[1], first_size[0])
    return _Geometry(height, width, forced_mode or ("L" if all_gray else "RGB"))


def _image_header(path: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"could not read image {path}: {exc}") from exc


def _decode_images(files: list[Path], geometry: _Geometry) -> np.ndarray:
    images = np.empty((len(files), geometry.height, geometry.width, geometry.channels), dtype=np.uint8)
    for row, path in enumerate(files):
        images[row] = _decode_image(path, geometry)
    return images


def _decode_image(path: Path, geometry: _Geometry) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return _fit(image, geometry)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"could not decode image {path}: {exc}") from exc


def _fit(image: Image.Image, geometry: _Geometry) -> np.ndarray:
    """`image` converted to the geometry's mode and size, as an (H, W, C) uint8 array."""
    if image.mode != geometry.mode:
        image = image.convert(geometry.mode)
    if image.size != (geometry.width, geometry.height):
        image = image.resize((geometry.width, geometry.height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(geometry.height, geometry.width, geometry.channels)


def _resized(dataset: Dataset, image_size: tuple[int, int] | None) -> Dataset:
    """`dataset` with its images resized to image_size (height, width); unchanged if they already fit."""
    if image_size is None or dataset.input_shape[:2] == image_size:
        return dataset
    LOG.info("resizing %s from %s to %s", dataset.name, dataset.input_shape[:2], image_size)
    mode = "L" if dataset.input_shape[2] == 1 else "RGB"
    geometry = _Geometry(image_size[0], image_size[1], mode)
    return replace(
        dataset, x_train=_resize_all(dataset.x_train, geometry), x_test=_resize_all(dataset.x_test, geometry)
    )


def _resize_all(images: np.ndarray, geometry: _Geometry) -> np.ndarray:
    resized = np.empty((len(images), geometry.height, geometry.width, geometry.channels), dtype=np.uint8)
    for row, image in enumerate(images):
        pixels = image[:, :, 0] if geometry.channels == 1 else image
        resized[row] = _fit(Image.fromarray(pixels), geometry)
    return resized
