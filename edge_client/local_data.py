"""The examples this device trains on: a seeded partition of a built-in dataset, an index range, a local image
folder, an .npz file, or a CSV table or series (whose examples are made when the coordinator's model says how)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from federation.learning.datasets import load_dataset
from federation.learning.own_data import (
    ARRAY_SUFFIXES, TABLE_SUFFIXES, examples_for_schema, labels_for_task, npz_class_names, read_npz,
)
from federation.learning.partition import PartitionSpec, client_indices, parse_index_range, parse_part
from federation.learning.tables import CsvTable, DataMismatchError, read_csv_table

if TYPE_CHECKING:
    from federation.protocol.messages import ModelInfo


@dataclass(frozen=True)
class DataChoice:
    dataset: str                       # built-in name, image-folder path, .npz or .csv file
    data_dir: str | None = None
    partition: str | None = None       # "1/2" (1-based) or None for everything
    scheme: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0
    index_range: str | None = None     # "0:5000"
    max_examples: int = 0              # 0: all
    image_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class LocalData:
    name: str
    x: np.ndarray
    y: np.ndarray                      # int64 class indices, or float32 regression targets
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_examples(self) -> int:
        return len(self.y)

    def for_model(self, info: ModelInfo) -> LocalData:
        """The examples to train `info`'s model on: these (images and arrays need no schema)."""
        return self


class LocalTable:
    """A CSV file (table or series) on this device: its examples are made by the DataSchema of the coordinator's
    model (columns by name, scaling, windows), then partitioned as the command line says."""

    def __init__(self, table: CsvTable, choice: DataChoice) -> None:
        self.table = table
        self.choice = choice
        self.name = table.path.name
        self._prepared: tuple[object, LocalData] | None = None

    @property
    def num_examples(self) -> int:
        """Rows of the file until the model's schema makes the examples (windows of a series are fewer)."""
        return self._prepared[1].num_examples if self._prepared else self.table.num_rows

    def for_model(self, info: ModelInfo) -> LocalData:
        """This device's share of the examples that `info`'s schema makes; DataMismatchError when the file does
        not fit (a missing column, an unknown class, a series shorter than a window)."""
        schema = info.data
        if schema is None:
            raise DataMismatchError(
                f"{self.table.path} is a CSV file, but the coordinator's model {info.name} (inputs "
                f"{tuple(info.input_shape)}) comes without a column schema: its [model] dataset is not a CSV. Give "
                "this device data of the model's kind, or run the coordinator on a CSV")
        key = (schema, info.task, info.class_names)
        if self._prepared is None or self._prepared[0] != key:
            x, y = examples_for_schema(self.table, schema, info.task, info.class_names)
            self._prepared = (key, select_examples(self.name, x, y, tuple(info.class_names), self.choice))
        return self._prepared[1]


LocalSource = Union[LocalData, LocalTable]


def load_local_data(choice: DataChoice) -> LocalSource:
    """Load the training data and keep this device's share of it; ValueError names a bad choice."""
    if choice.partition and choice.index_range:
        raise ValueError("give either --partition or --index-range, not both")
    if choice.partition:
        parse_part(choice.partition)  # a malformed part is an error now, not when the first model comes
    suffix = Path(choice.dataset).suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return LocalTable(read_csv_table(choice.dataset), choice)
    if suffix in ARRAY_SUFFIXES:
        arrays = read_npz(choice.dataset)
        names = npz_class_names(arrays, arrays.y) if arrays.y.dtype.kind != "f" else ()
        return select_examples(arrays.path.name, arrays.x, arrays.y, names, choice)
    dataset = load_dataset(choice.dataset, data_dir=choice.data_dir, image_size=choice.image_size)
    return select_examples(dataset.name, dataset.x_train, dataset.y_train, dataset.class_names, choice)


def select_examples(name: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...],
                    choice: DataChoice) -> LocalData:
    """The first --max-examples examples, then this device's --partition or --index-range of them."""
    if choice.max_examples:
        x, y = x[: choice.max_examples], y[: choice.max_examples]
    if choice.index_range:
        idx = parse_index_range(choice.index_range, len(y))
        label = f"range {choice.index_range}"
    elif choice.partition:
        index, parts = parse_part(choice.partition)
        idx = client_indices(y if y.ndim == 1 else y[:, 0], PartitionSpec(index, parts, choice.scheme, choice.seed, choice.alpha,
                                              choice.shards_per_client))
        label = f"part {choice.partition} ({choice.scheme})"
    else:
        idx = np.arange(len(y))
        label = "all"
    if len(idx) == 0:
        raise ValueError(f"{name} {label}: no training examples")
    return LocalData(f"{name} {label}", x[idx], y[idx], class_names)


def task_labels(data: LocalData, info: ModelInfo) -> tuple[np.ndarray, tuple[str, ...]]:
    """This device's labels read for `info`'s task, with their class names: float32 targets (regression, whose
    count per example must be the model's outputs), or int64 class indices (classification)."""
    where = f"this device's data ({data.name})"
    if info.task == "regression":
        targets = labels_for_task(data.y, "regression", where)
        per_example = 1 if targets.ndim == 1 else targets.shape[1]
        if per_example != info.num_outputs:
            raise DataMismatchError(f"{where} has {per_example} target value(s) per example, but the coordinator's "
                                    f"regression model predicts {info.num_outputs}")
        return targets, ()
    labels = labels_for_task(data.y, "classification", where)
    names = data.class_names or tuple(str(i) for i in range(int(labels.max()) + 1 if labels.size else 0))
    return labels, names
