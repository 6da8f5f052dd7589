"""The user's own data: CSV tables, CSV time series and .npz arrays, as the coordinator's Dataset (with the
DataSchema devices receive) and as a device's examples made by that schema.

The coordinator decides the columns, classes and scaling from its file; a device applies them to its own file."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from federation.learning.datasets import Dataset, DatasetError, DatasetNotFoundError
from federation.learning.series import window_starts, window_targets, windows
from federation.learning.tables import (
    CsvTable, DataMismatchError, TableError, apply_scaling, class_indices, class_names_of, feature_names,
    numeric_column, numeric_columns, read_csv_table, shown, standard_scaling,
)
from federation.protocol.data_schema import DATA_KINDS, SERIES_TARGETS, DataSchema

LOG = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv")
ARRAY_SUFFIXES = (".npz",)
SCALINGS = ("none", "standard")
NPZ_ARRAYS = ("x", "y", "x_test", "y_test", "class_names")


@dataclass(frozen=True)
class TableOptions:
    """How the coordinator makes examples from its CSV ([data] settings), and how much it holds out to test."""

    kind: str = "table"               # table: one example per row; series: windows of rows
    label: str = ""                   # label column (empty: the last column)
    features: tuple[str, ...] = ()    # feature columns in order (empty: every other column, in file order)
    scaling: str = "none"             # none | standard (the coordinator's mean and std, sent to devices)
    test_file: str = ""               # a separate test file (empty: hold out test_fraction of this one)
    test_fraction: float = 0.2        # tables: seeded random rows; series: the last rows (no overlap in time)
    seed: int = 0
    window: int = 16                  # series: rows per example
    stride: int = 1                   # series: rows between window starts
    target: str = "last"              # series: the label at the window's last row, or a future value
    horizon: int = 0                  # series, target future: rows after the window's last row

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS or self.scaling not in SCALINGS or self.target not in SERIES_TARGETS:
            raise ValueError(f"bad table options {self}")
        object.__setattr__(self, "features", tuple(self.features))


def is_own_data_file(name: str | Path) -> bool:
    """Whether `name` is a file this module loads (by its suffix): .csv, .tsv or .npz."""
    return Path(name).suffix.lower() in TABLE_SUFFIXES + ARRAY_SUFFIXES


def load_own_dataset(path: str | Path, options: TableOptions, task: str = "classification") -> Dataset:
    """The coordinator's data set from a .csv (options say how) or an .npz file; `task` reads the labels as
    class names or as float targets."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"data file {path} does not exist")
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return _array_dataset(path, options, task)
    return _table_dataset(path, options, task)


# ---- CSV tables and series -------------------------------------------------------------------------------


def _table_dataset(path: Path, options: TableOptions, task: str) -> Dataset:
    table = read_csv_table(path)
    label = options.label or table.columns[-1]
    if label not in table.columns:
        raise TableError(f"{path} has no label column {label!r} ([data] label); its columns are "
                         f"{shown(table.columns)}")
    features = feature_names(table, label, options.features)
    train, test = _test_split(table, options)
    class_names: tuple[str, ...] = ()
    if task == "classification":
        class_names = class_names_of(np.concatenate([train.column(label), test.column(label)]))
        if len(class_names) < 2:
            raise TableError(f"{path}: the label column {label!r} holds one class only ({shown(class_names)}); a "
                             "classifier needs two or more (or is this a regression?)")
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    if options.scaling == "standard":
        mean, std = standard_scaling(numeric_columns(train, features))
    series = options.kind == "series"
    schema = DataSchema(options.kind, features, label, mean, std, window=options.window if series else 0,
                        stride=options.stride if series else 0, target=options.target if series else "last",
                        horizon=options.horizon if series else 0)
    x_train, y_train = examples_for_schema(train, schema, task, class_names)
    x_test, y_test = examples_for_schema(test, schema, task, class_names)
    LOG.info("%s: %d training and %d test examples of shape %s, %s", path.name, len(x_train), len(x_test),
             schema.input_shape, f"{len(class_names)} classes" if class_names else "regression")
    return Dataset(path.stem, x_train, y_train, x_test, y_test, class_names, schema)


def _test_split(table: CsvTable, options: TableOptions) -> tuple[CsvTable, CsvTable]:
    """(training rows, test rows): the test file's rows, else a seeded random share (tables) or the last
    rows (series, so that no test window overlaps a training window in time)."""
    if options.test_file:
        return table, read_csv_table(options.test_file)  # its columns are looked up by name
    rows = table.num_rows
    count = int(round(options.test_fraction * rows))
    if options.test_fraction <= 0 or count < 1 or count >= rows:
        raise TableError(f"{table.path}: holding out test_fraction {options.test_fraction:g} of {rows} rows leaves "
                         "no test rows or no training rows; set [data] test_fraction (e.g. 0.2) or test_file")
    if options.kind == "series":
        order = np.arange(rows)
    else:
        order = np.random.default_rng(options.seed).permutation(rows)
    train, test = np.sort(order[: rows - count]), np.sort(order[rows - count:])
    return table.select(train), table.select(test)


def examples_for_schema(table: CsvTable, schema: DataSchema, task: str,
                        class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of `table` made the coordinator's way: its feature columns in its order, scaled with its
    statistics, windowed as it says; labels as indices of its classes, or float32 targets (regression).

    DataMismatchError names a missing column, an unknown class or a too-short series; TableError bad cells."""
    missing = [name for name in (*schema.features, schema.label) if name not in table.columns]
    if missing:
        raise DataMismatchError(f"{table.path} lacks the column(s) {shown(missing)} that the coordinator's model "
                                f"reads; its columns are {shown(table.columns)}. Rename the columns to the "
                                "coordinator's names (extra columns and another order are fine)")
    x = apply_scaling(numeric_columns(table, schema.features), schema.mean, schema.std)
    if task == "regression":
        targets = numeric_column(table, schema.label)
    else:
        targets = class_indices(table, schema.label, class_names)
    if schema.kind == "table":
        return x, targets
    starts = window_starts(table.num_rows, schema.window, schema.stride, schema.horizon, where=str(table.path))
    return windows(x, starts, schema.window), window_targets(targets, starts, schema.window, schema.horizon)


# ---- .npz arrays -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ArrayFile:
    """The arrays of an .npz file: x and y, optional x_test and y_test, optional class names."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]


def read_npz(path: str | Path) -> ArrayFile:
    """Read and check an .npz file (no pickles): `x` (N, ...) numbers and `y` (N,) or (N, k) labels or targets."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f".npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name in NPZ_ARRAYS}
            others = [name for name in archive.files if name not in NPZ_ARRAYS]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path} is not a readable .npz file of plain arrays: {exc}") from None
    if "x" not in arrays or "y" not in arrays:
        raise DatasetError(f"{path} holds the arrays {shown(sorted(arrays) + others)}; an .npz data file needs "
                           "'x' (inputs) and 'y' (labels or targets), optionally 'x_test', 'y_test' and "
                           "'class_names'")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(f"{path}: 'x_test' and 'y_test' go together")
    x, y = _inputs(path, "x", arrays["x"]), _labels(path, "y", arrays["y"])
    _check_pair(path, "x", x, "y", y)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test, y_test = _inputs(path, "x_test", arrays["x_test"]), _labels(path, "y_test", arrays["y_test"])
        _check_pair(path, "x_test", x_test, "y_test", y_test)
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(f"{path}: x_test rows are {x_test.shape[1:]} but x rows are {x.shape[1:]}")
    names: tuple[str, ...] = ()
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.dtype.kind not in "US" or raw.ndim != 1:
            raise DatasetError(f"{path}: class_names must be a 1-D array of strings, got {raw.dtype} {raw.shape}")
        names = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in raw)
    return ArrayFile(path, x, y, x_test, y_test, names)


def _inputs(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf" or array.ndim < 2 or len(array) == 0:
        raise DatasetError(f"{path}: {name!r} must be a non-empty numeric array of shape (examples, ...), got "
                           f"{array.dtype} {array.shape}")
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise DatasetError(f"{path}: {name!r} holds NaN or infinite values; clean them first")
    return values


def _labels(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf" or array.ndim not in (1, 2):
        raise DatasetError(f"{path}: {name!r} must be numeric (N,) or (N, k), got {array.dtype} {array.shape}")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DatasetError(f"{path}: {name!r} holds NaN or infinite values; clean them first")
        return array.astype(np.float32)
    return array.astype(np.int64)


def _check_pair(path: Path, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise DatasetError(f"{path}: {x_name!r} has {len(x)} examples but {y_name!r} has {len(y)}")


def labels_for_task(y: np.ndarray, task: str, where: str) -> np.ndarray:
    """`y` as int64 class indices (classification: integral, >= 0) or float32 targets (regression)."""
    if task == "regression":
        return y.astype(np.float32)
    if y.ndim != 1 or (y.dtype.kind == "f" and not np.equal(np.mod(y, 1), 0).all()):
        raise DataMismatchError(f"{where}: the labels are float values (a regression target), but the model is a "
                                "classifier; its compile recipe decides the task")
    labels = y.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise DataMismatchError(f"{where}: class labels must be >= 0, found {int(labels.min())}")
    return labels


def npz_class_names(arrays: ArrayFile, labels: np.ndarray) -> tuple[str, ...]:
    """The file's class names, else "0".."K-1" for the largest label K-1 (at least two)."""
    top = int(labels.max()) + 1 if len(labels) else 0
    if arrays.class_names:
        if top > len(arrays.class_names):
            raise DatasetError(f"{arrays.path}: labels go up to {top - 1} but class_names has "
                               f"{len(arrays.class_names)} names")
        return arrays.class_names
    return tuple(str(i) for i in range(max(top, 2)))


def _array_dataset(path: Path, options: TableOptions, task: str) -> Dataset:
    arrays = read_npz(path)
    where = str(path)
    y = labels_for_task(arrays.y, task, where)
    if arrays.x_test is not None and arrays.y_test is not None:
        x_train, y_train = arrays.x, y
        x_test, y_test = arrays.x_test, labels_for_task(arrays.y_test, task, where)
    else:
        count = int(round(options.test_fraction * len(y)))
        if options.test_fraction <= 0 or count < 1 or count >= len(y):
            raise DatasetError(f"{path} has no x_test/y_test, and test_fraction {options.test_fraction:g} of "
                               f"{len(y)} examples leaves no test or no training examples; set [data] test_fraction")
        order = np.random.default_rng(options.seed).permutation(len(y))
        train, test = np.sort(order[: len(y) - count]), np.sort(order[len(y) - count:])
        x_train, y_train, x_test, y_test = arrays.x[train], y[train], arrays.x[test], y[test]
    names: tuple[str, ...] = ()
    if task == "classification":
        names = npz_class_names(arrays, np.concatenate([y_train, y_test]))
    return Dataset(path.stem, x_train, y_train, x_test, y_test, names)
