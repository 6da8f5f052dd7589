"""Sensor time series from CSV: sliding windows, their targets (the last row's label, or a future value), the
coordinator's chronological test split, and files too short for a window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.learning.own_data import TableOptions, examples_for_schema, load_own_dataset
from federation.learning.series import window_starts, window_targets, windows
from federation.learning.tables import DataMismatchError, read_csv_table
from federation.protocol.data_schema import DataSchema


def _series_csv(tmp_path: Path, rows: int = 30) -> Path:
    lines = ["t,temp,state"] + [f"{i},{i * 10},{'on' if (i // 5) % 2 else 'off'}" for i in range(rows)]
    path = tmp_path / "s.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_windows_start_every_stride_rows_and_stop_where_the_target_still_fits() -> None:
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(10, 4, 3, horizon=2).tolist() == [0, 3]  # the target of a window at 3 is row 3+3+2 = 8
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    starts = window_starts(10, 3, 4)
    got = windows(rows, starts, 3)
    assert got.shape == (2, 3, 2) and got[1, 0].tolist() == [8.0, 9.0]
    assert window_targets(np.arange(10), starts, 3, 0).tolist() == [2, 6]
    assert window_targets(np.arange(10), starts, 3, 2).tolist() == [4, 8]


def test_a_window_longer_than_the_file_is_refused() -> None:
    with pytest.raises(DataMismatchError, match="has 5 rows, fewer than one window of 8 rows"):
        window_starts(5, 8, 1)
    with pytest.raises(DataMismatchError, match="window of 4 rows plus a horizon of 3"):
        window_starts(6, 4, 1, horizon=3)


def test_classification_takes_the_label_of_each_windows_last_row(tmp_path: Path) -> None:
    table = read_csv_table(_series_csv(tmp_path))
    schema = DataSchema("series", ("temp",), "state", window=4, stride=5)
    x, y = examples_for_schema(table, schema, "classification", ("off", "on"))
    assert x.shape == (6, 4, 1) and x[1, :, 0].tolist() == [50, 60, 70, 80]
    assert y.tolist() == [0, 1, 0, 1, 0, 1]  # rows 3, 8, 13...: off, on, off...


def test_regression_forecasts_a_value_horizon_rows_after_the_window(tmp_path: Path) -> None:
    table = read_csv_table(_series_csv(tmp_path))
    schema = DataSchema("series", ("t", "temp"), "temp", window=5, stride=5, target="future", horizon=2)
    x, y = examples_for_schema(table, schema, "regression", ())
    assert x.shape == (5, 5, 2) and y.dtype == np.float32
    assert y.tolist() == [60.0, 110.0, 160.0, 210.0, 260.0]  # row 4 + 2 = 6 -> 60


def test_a_device_series_shorter_than_the_window_is_refused(tmp_path: Path) -> None:
    table = read_csv_table(_series_csv(tmp_path, rows=3))
    schema = DataSchema("series", ("temp",), "state", window=4, stride=1)
    with pytest.raises(DataMismatchError, match="s.csv has 3 rows, fewer than one window of 4 rows"):
        examples_for_schema(table, schema, "classification", ("off", "on"))


def test_the_coordinator_holds_out_the_last_rows_of_a_series(tmp_path: Path) -> None:
    options = TableOptions(kind="series", label="state", features=("temp",), window=4, stride=1,
                           test_fraction=0.2, scaling="standard")
    data = load_own_dataset(_series_csv(tmp_path, rows=50), options)
    assert data.schema is not None and data.schema.input_shape == (4, 1) and data.input_shape == (4, 1)
    assert data.x_train.shape == (37, 4, 1) and data.x_test.shape == (7, 4, 1)  # 40 and 10 rows
    mean, std = data.schema.mean[0], data.schema.std[0]
    assert mean == pytest.approx(195.0)  # rows 0..39 only: the test rows don't leak into the scaling
    assert data.x_test[0, 0, 0] == pytest.approx((400 - mean) / std)


def test_the_simulated_room_is_seeded_and_loads_as_an_occupancy_series(tmp_path: Path) -> None:
    from demo.room_sensors import COLUMNS, simulate, write_csv

    assert simulate(1, seed=3) == simulate(1, seed=3) and simulate(1, seed=3) != simulate(1, seed=4)
    path = write_csv(tmp_path / "room.csv", days=2, seed=1)
    options = TableOptions(kind="series", label="occupancy", features=("indoor_c", "co2_ppm", "humidity_pct"),
                           window=30, stride=10, scaling="standard")
    data = load_own_dataset(path, options)
    assert read_csv_table(path).columns == COLUMNS and data.class_names == ("empty", "occupied")
    assert data.input_shape == (30, 3) and set(np.unique(data.y_train)) == {0, 1}
