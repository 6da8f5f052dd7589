"""Tests for coordinator.run_data: the coordinator's .npz data is read for the run's task (no model file here, so no
TensorFlow: a registry model leaves the task to the data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.run_data import load_run_dataset
from federation.config.settings import settings_from_dict
from federation.learning.tables import DataMismatchError


def npz(path: Path, y: np.ndarray) -> Path:
    x = np.arange(len(y) * 3, dtype=np.float32).reshape(len(y), 3)
    np.savez(path, x=x, y=y, x_test=x[:4], y_test=y[:4])
    return path


def test_float_targets_are_a_regressions_and_integer_labels_a_classifications(tmp_path: Path) -> None:
    targets = npz(tmp_path / "targets.npz", np.linspace(25.5, 300.25, 12).astype(np.float32))
    labels = npz(tmp_path / "labels.npz", np.arange(12) % 3)
    regression = load_run_dataset(settings_from_dict({"model": {"dataset": str(targets)}}))
    assert regression.task == "regression" and regression.class_names == ()
    assert regression.y_test.dtype == np.float32 and regression.y_test[0] == pytest.approx(25.5)
    classification = load_run_dataset(settings_from_dict({"model": {"dataset": str(labels)}}))
    assert classification.task == "classification" and classification.num_classes == 3


def test_an_explicit_task_is_how_the_labels_are_read(tmp_path: Path) -> None:
    whole = npz(tmp_path / "whole.npz", (np.arange(12) * 10.0).astype(np.float32))
    settings = settings_from_dict({"model": {"dataset": str(whole)}})
    assert load_run_dataset(settings).task == "classification", "integral values: classes unless told otherwise"
    assert load_run_dataset(settings, "regression").task == "regression"
    fractional = npz(tmp_path / "fractional.npz", np.full(12, 0.5, np.float32))
    with pytest.raises(DataMismatchError, match="the labels are float values"):
        load_run_dataset(settings_from_dict({"model": {"dataset": str(fractional)}}), "classification")
