""".npz data files: arrays x and y (optionally x_test, y_test, class_names), as the coordinator's Dataset and as a
device's data, and the files that are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_client.local_data import DataChoice, LocalData, load_local_data, task_labels
from federation.learning.datasets import DatasetError, load_dataset
from federation.learning.own_data import TableOptions, read_npz
from federation.learning.partition import PartitionError
from federation.learning.tables import DataMismatchError
from federation.protocol.messages import ModelInfo


def _npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_classification_arrays_with_a_test_split_and_class_names(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((6, 3), np.float64), y=np.array([0, 1, 2, 0, 1, 2]),
                x_test=np.zeros((2, 3)), y_test=np.array([1, 2]), class_names=np.array(["a", "b", "c"]))
    data = load_dataset(str(path))
    assert data.class_names == ("a", "b", "c") and data.x_train.dtype == np.float32 and data.input_shape == (3,)
    assert data.y_test.tolist() == [1, 2] and data.task == "classification"


def test_without_a_test_split_a_seeded_fraction_is_held_out_and_names_are_numbers(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.arange(40, dtype=np.float32).reshape(20, 2), y=np.arange(20) % 2)
    data = load_dataset(str(path), table=TableOptions(test_fraction=0.25, seed=3))
    assert len(data.y_train) == 15 and len(data.y_test) == 5 and data.class_names == ("0", "1")


def test_regression_targets(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((10, 4)), y=np.linspace(0, 1, 10))
    data = load_dataset(str(path), task="regression")
    assert data.task == "regression" and data.class_names == () and data.y_train.dtype == np.float32
    with pytest.raises(DataMismatchError, match="float values .* but the model is a classifier"):
        load_dataset(str(path))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.ones((3, 2))}, "needs 'x' .* and 'y'"),
    ({"x": np.ones((3, 2)), "y": np.ones(2)}, "'x' has 3 examples but 'y' has 2"),
    ({"x": np.ones(3), "y": np.ones(3)}, "'x' must be a non-empty numeric array of shape"),
    ({"x": np.array([["a"]]), "y": np.ones(1)}, "numeric"),
    ({"x": np.full((2, 2), np.nan), "y": np.ones(2)}, "NaN or infinite"),
    ({"x": np.ones((2, 2)), "y": np.array([np.nan, 1])}, "NaN or infinite"),
    ({"x": np.ones((2, 2)), "y": np.ones(2), "x_test": np.ones((1, 2))}, "go together"),
    ({"x": np.ones((2, 2)), "y": np.ones(2), "x_test": np.ones((1, 3)), "y_test": np.ones(1)}, "x_test rows"),
])
def test_bad_npz_files_are_refused_clearly(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_npz(_npz(tmp_path, **arrays))


def test_pickled_objects_and_non_npz_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.ones(2))
    with pytest.raises(DatasetError, match="not a readable .npz file of plain arrays"):
        read_npz(path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        read_npz(junk)


def test_a_device_partitions_an_npz_and_reads_labels_for_the_models_task(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((12, 2)), y=np.arange(12) % 3)
    data = load_local_data(DataChoice(str(path), partition="2/3", max_examples=9))
    assert isinstance(data, LocalData) and len(data.y) == 3 and data.class_names == ("0", "1", "2")
    labels, names = task_labels(data, ModelInfo("m", (2,), 3, ("0", "1", "2")))
    assert labels.dtype == np.int64 and names == ("0", "1", "2")


def test_regression_targets_split_iid_or_by_range_only(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.ones((12, 2)), y=np.linspace(0, 5, 12))
    assert len(load_local_data(DataChoice(str(path), index_range="2:7")).y) == 5
    with pytest.raises(PartitionError, match="the dirichlet scheme splits by class.*regression targets"):
        load_local_data(DataChoice(str(path), partition="1/2", scheme="dirichlet"))
    data = load_local_data(DataChoice(str(path), partition="1/2"))
    assert isinstance(data, LocalData)
    with pytest.raises(DataMismatchError, match="1 target value.* predicts 2"):
        task_labels(data, ModelInfo("m", (2,), 0, task="regression", num_outputs=2))
    labels, _ = task_labels(data, ModelInfo("m", (2,), 0, task="regression", num_outputs=1))
    assert labels.dtype == np.float32
