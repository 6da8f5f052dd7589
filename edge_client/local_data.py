"""The examples this device trains on: a seeded partition of a built-in dataset, an index range,
or a local image folder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.learning.datasets import load_dataset
from federation.learning.partition import PartitionSpec, client_indices, parse_index_range, parse_part


@dataclass(frozen=True)
class DataChoice:
    dataset: str                       # built-in name or image-folder path
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
    y: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def load_local_data(choice: DataChoice) -> LocalData:
    """Load the training split and keep this device's share of it; ValueError names a bad choice."""
    dataset = load_dataset(choice.dataset, data_dir=choice.data_dir, image_size=choice.image_size)
    x, y = dataset.x_train, dataset.y_train
    if choice.max_examples:
        x, y = x[: choice.max_examples], y[: choice.max_examples]
    if choice.partition and choice.index_range:
        raise ValueError("give either --partition or --index-range, not both")
    if choice.index_range:
        idx = parse_index_range(choice.index_range, len(y))
        label = f"range {choice.index_range}"
    elif choice.partition:
        index, parts = parse_part(choice.partition)
        idx = client_indices(y, PartitionSpec(index, parts, choice.scheme, choice.seed, choice.alpha,
                                              choice.shards_per_client))
        label = f"part {choice.partition} ({choice.scheme})"
    else:
        idx = np.arange(len(y))
        label = "all"
    if len(idx) == 0:
        raise ValueError(f"{dataset.name} {label}: no training examples")
    return LocalData(f"{dataset.name} {label}", x[idx], y[idx], dataset.class_names)
