"""The `data` map of the model map: round trips through the global model message, hostile values are refused
with a DecodeError (never another exception), and a CSV device refuses a model its file does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.client import ClientSettings, EdgeClient, IncompatibleModelError
from edge_client.local_data import DataChoice, LocalTable, load_local_data
from federation.protocol.codec import DecodeError
from federation.protocol.data_schema import DataSchema
from federation.protocol.messages import GlobalModel, ModelInfo, TrainingPlan, decode_message
from federation.transport.mqtt_link import BrokerAddress

TABLE = DataSchema("table", ("a", "b"), "y", mean=(1.0, 2.0), std=(0.5, 3.0))
SERIES = DataSchema("series", ("temp", "co2"), "occupancy", window=8, stride=2)


def _message(info: ModelInfo) -> GlobalModel:
    return GlobalModel(run="r", round=1, sender="coordinator", model=info, train=TrainingPlan(1, 8, 0.001),
                       tensors=[("w", np.zeros(2, np.float32))], total_rounds=3)


@pytest.mark.parametrize("schema", [TABLE, SERIES, DataSchema("series", ("t",), "t", window=4, stride=1,
                                                                   target="future", horizon=3)])
def test_the_schema_round_trips_in_the_global_model(schema: DataSchema) -> None:
    info = ModelInfo("dense_classifier", schema.input_shape, 2, ("no", "yes"), data=schema)
    decoded = decode_message(_message(info).encode())
    assert isinstance(decoded, GlobalModel) and decoded.model == info and decoded.model.data == schema


def test_without_a_schema_the_model_map_is_unchanged() -> None:
    info = ModelInfo("small_cnn", (28, 28, 1), 10)
    assert "data" not in info.to_wire()
    assert ModelInfo.from_wire({**info.to_wire(), "data": None}).data is None


def test_the_table_wire_form_holds_only_what_is_set() -> None:
    assert DataSchema("table", ("a",), "y").to_wire() == {"kind": "table", "features": ["a"], "label": "y"}
    assert SERIES.to_wire()["window"] == 8 and "mean" not in SERIES.to_wire()


def _wire(**changes: Any) -> dict[str, Any]:
    wire = SERIES.to_wire()
    wire.update(changes)
    return {k: v for k, v in wire.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize("raw, message", [
    ("table", "expected a map"),
    (_wire(kind="video"), "unknown kind"),
    (_wire(kind=None), "field 'kind' has type NoneType"),
    (_wire(features=_DROP), "missing field 'features'"),
    (_wire(features=[]), "0 features"),
    (_wire(features=["a", 3]), "list of at most 4096 str"),
    (_wire(features=["a"] * 5000), "list of at most 4096"),
    (_wire(features=["a", "a"]), "feature names repeat"),
    (_wire(features=["x" * 300]), "is not a str of 1..256"),
    (_wire(label=""), "is not a str of 1..256"),
    (_wire(mean=[0.0, 1.0]), "2 means and 0 stds"),
    (_wire(mean=[0.0], std=[1.0]), "1 means and 1 stds for 2 features"),
    (_wire(mean=[0.0, float("nan")], std=[1.0, 1.0]), "finite numbers"),
    (_wire(mean=[0.0, 1.0], std=[1.0, 0.0]), "a std is not a finite number > 0"),
    (_wire(mean=[0.0, True], std=[1.0, 1.0]), "finite numbers"),
    (_wire(window=0), "window 0 and stride 2 must be"),
    (_wire(window=10**9), "must be 1..100000"),
    (_wire(window=2.5), "field 'window' has type float"),
    (_wire(stride=_DROP), "missing field 'stride'"),
    (_wire(target="past"), "unknown target"),
    (_wire(target="future", horizon=0), "needs a horizon"),
    (_wire(horizon=3), "a horizon applies to target future only"),
])
def test_hostile_data_maps_are_refused_by_name(raw: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        DataSchema.from_wire(raw)


def test_a_table_schema_with_series_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="apply to series only"):
        DataSchema("table", ("a",), "y", window=3, stride=1)
    assert DataSchema.from_wire({**TABLE.to_wire(), "window": 3}) == TABLE  # a table ignores series keys


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)
_keys = st.sampled_from(["kind", "features", "label", "mean", "std", "window", "stride", "target", "horizon"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _json | st.sampled_from(["table", "series", "last", "future"]), max_size=9))
def test_any_data_map_decodes_or_raises_decode_error(raw: dict[str, Any]) -> None:
    try:
        schema = DataSchema.from_wire(raw)
    except DecodeError:
        return
    assert schema.problem() == "" and DataSchema.from_wire(schema.to_wire()) == schema


# ---- a CSV device and the model's schema -----------------------------------------------------------------


def _csv_client(tmp_path: Path, text: str, **choice: Any) -> EdgeClient:
    path = tmp_path / "mine.csv"
    path.write_text(text)
    source = load_local_data(DataChoice(str(path), **choice))
    assert isinstance(source, LocalTable)
    return EdgeClient(ClientSettings("dev-1", BrokerAddress("127.0.0.1", 1)), source)


def test_a_csv_device_makes_its_examples_from_the_schema_and_counts_rows_until_then(tmp_path: Path) -> None:
    rows = "".join(f"{i % 2},{i},{2 * i},note\n" for i in range(10))
    client = _csv_client(tmp_path, "y,b,a,extra\n" + rows, partition="1/2")
    assert client.trainer.num_examples == 10 and client.trainer.data is None
    info = ModelInfo("dense_classifier", (2,), 2, ("0", "1"), data=TABLE)
    data = client.trainer.data_for(info)
    assert data.x.shape == (5, 2) and client.trainer.num_examples == 5
    labels = client.trainer.labels_for(info)
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1}
    assert client.trainer.data_for(info) is data  # made once per model schema


@pytest.mark.parametrize("info, message", [
    (ModelInfo("small_cnn", (28, 28, 1), 10), "comes without a column schema"),
    (ModelInfo("m", (2,), 2, ("0", "1"), data=DataSchema("table", ("a", "pressure"), "y")),
     "lacks the column.*'pressure'"),
    (ModelInfo("m", (2,), 2, ("1", "2"), data=TABLE), "label '0' is not one of the coordinator's 2 classes"),
    (ModelInfo("m", (40, 2), 2, ("0", "1"), data=DataSchema("series", ("a", "b"), "y", window=40, stride=1)),
     "has 10 rows, fewer than one window of 40 rows"),
])
def test_a_csv_device_refuses_a_model_its_file_does_not_fit(tmp_path: Path, info: ModelInfo, message: str) -> None:
    client = _csv_client(tmp_path, "y,b,a\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(10)))
    with pytest.raises(IncompatibleModelError, match=message):
        client.trainer.model_for(info)


def test_a_model_whose_input_shape_disagrees_with_its_schema_is_refused(tmp_path: Path) -> None:
    client = _csv_client(tmp_path, "y,b,a\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(10)))
    with pytest.raises(IncompatibleModelError, match=r"takes inputs of shape \(3,\).*has shape \(2,\)"):
        client.trainer.model_for(ModelInfo("m", (3,), 2, ("0", "1"), data=TABLE))


def test_text_in_a_feature_column_is_refused_when_the_model_names_it(tmp_path: Path) -> None:
    client = _csv_client(tmp_path, "y,b,a\n0,1,2\n1,x,3\n")
    with pytest.raises(IncompatibleModelError, match="line 3, column 'b': 'x' is not a number"):
        client.trainer.model_for(ModelInfo("m", (2,), 2, ("0", "1"), data=TABLE))


def test_a_regression_model_on_a_csv_reads_float_targets_and_refuses_a_class_partition(tmp_path: Path) -> None:
    text = "y,b,a\n" + "".join(f"{i * 0.5},{i},{2 * i}\n" for i in range(10))
    info = ModelInfo("m", (2,), 0, task="regression", num_outputs=1, data=TABLE)
    client = _csv_client(tmp_path, text, index_range="0:4")
    assert len(client.trainer.data_for(info).y) == 4
    assert client.trainer.labels_for(info).dtype == np.float32
    skewed = _csv_client(tmp_path, text, partition="1/2", scheme="shards")
    with pytest.raises(IncompatibleModelError, match="the shards scheme splits by class"):
        skewed.trainer.data_for(info)
