"""Tests for a regression run's results, in process and without TensorFlow: the MAE and RMSE arithmetic against
numpy, their wire fields (round_metrics, run_end, deployed_model) with bad input, metrics.jsonl, the report, the
live panel, the baseline's comparison line, and the values a deployed regression model answers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from coordinator.baseline import compare_with_federated, result_text
from coordinator.evaluation import (
    REGRESSION, Evaluation, evaluate_loaded, keras_file_task, regression_errors, task_of_loss, task_of_targets,
)
from coordinator.metrics import RoundMetrics, append_metrics, read_metrics, round_metrics_message, to_json_line
from coordinator.progress import RunProgress
from coordinator.report import REGRESSION_PLOTS, ReportError, summary_markdown, write_report
from edge_client.images import InputError, as_batch
from edge_client.serve import LoadedModel, ModelServer
from federation.inference.runtime import regression_answer
from federation.protocol.codec import DecodeError, pack, unpack
from federation.protocol.deployed_model import DeploymentError, DeploymentInfo, TensorFormat
from federation.protocol.messages import DeployedModel, RoundMetricsMessage, RunEnd, decode_message
from tests.unit.test_progress import text_of
from tests.unit.test_report import federated_rows, make_run, markdown_table

ENV = dict(run="reg", round=2, sender="coordinator", sent_at=1712345678.25)
NAN = float("nan")


def regression_rows(scale: float = 1.0) -> list[RoundMetrics]:
    """Three rounds of a regression: no accuracy (NaN), falling errors."""
    return [RoundMetrics(round=r, clients=2, examples=300, test_loss=3000.0 * scale / r, test_accuracy=NAN,
                         bytes_in=20000, bytes_out=10000, round_time_s=2.0, slowest_train_s=1.5, overhead_s=0.5,
                         aggregate_s=0.01, evaluate_s=0.02, client_ids=["a", "b"], test_mae=60.0 * scale / r,
                         test_rmse=75.0 * scale / r)
            for r in range(1, 4)]


# ---- the arithmetic ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)),
       arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)))
def test_mae_and_rmse_are_numpys(pred: np.ndarray, true: np.ndarray) -> None:
    n = min(len(pred), len(true))
    pred, true = pred[:n], true[:n]
    mae, rmse = regression_errors(pred.reshape(-1, 1).astype(np.float32), true)  # a model's [N, 1] output
    assert mae == pytest.approx(np.mean(np.abs(pred.astype(np.float32) - true)), rel=1e-9, abs=1e-9)
    assert rmse == pytest.approx(np.sqrt(np.mean((pred.astype(np.float32) - true) ** 2)), rel=1e-9, abs=1e-9)
    assert rmse >= mae - 1e-9 * max(1.0, mae), "RMSE is never below MAE"


def test_known_errors_and_several_outputs() -> None:
    assert regression_errors(np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 1.0, 1.0])) == \
        pytest.approx((4 / 3, math.sqrt(10 / 3)))
    two = np.array([[1.0, 0.0], [3.0, 2.0]])
    assert regression_errors(two, np.zeros((2, 2))) == pytest.approx((1.5, math.sqrt(14 / 4)))
    with pytest.raises(ValueError, match=r"predictions of shape \(2, 2\) for targets of shape \(2,\)"):
        regression_errors(two, np.zeros(2))
    with pytest.raises(ValueError, match="no examples"):
        regression_errors(np.zeros((0, 1)), np.zeros(0))


def test_the_task_of_a_test_split_and_an_evaluation() -> None:
    assert task_of_targets(np.array([1.5, 2.0], np.float32)) == REGRESSION
    assert task_of_targets(np.array([1, 2], np.int64)) == "classification"
    ev = Evaluation(2950.123456, NAN, 89, 43.21, 54.3219)
    assert ev.is_regression and ev.final_accuracy is None
    assert ev.describe() == "MAE 43.21, RMSE 54.32, loss 2950.1235"
    assert Evaluation(0.3456, 0.8765, 10).describe() == "accuracy 0.8765, loss 0.3456"


def keras_file(path: Path, compile_config: Any) -> Path:
    """A .keras zip holding only the config.json a saved model has (what keras_file_task reads)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "compile_config": compile_config}))
    return path


def test_the_task_of_a_saved_keras_files_loss(tmp_path: Path) -> None:
    huber = {"loss": {"module": "keras.losses", "class_name": "Huber", "config": {"name": "huber_loss"}}}
    assert keras_file_task(keras_file(tmp_path / "a.keras", huber)) == REGRESSION
    assert keras_file_task(keras_file(tmp_path / "b.keras", {"loss": "mse"})) == REGRESSION
    assert keras_file_task(keras_file(tmp_path / "c.keras", {"loss": "sparse_categorical_crossentropy"})) == \
        "classification"
    assert keras_file_task(keras_file(tmp_path / "d.keras", None)) is None, "saved uncompiled"
    (tmp_path / "e.keras").write_bytes(b"not a zip")
    assert keras_file_task(tmp_path / "e.keras") is None and keras_file_task(tmp_path / "missing.keras") is None
    assert [task_of_loss(n) for n in ("MeanAbsoluteError", "log_cosh", "mean_squared_logarithmic_error",
                                      "binary_crossentropy")] == [REGRESSION] * 3 + ["classification"]


class FakeTFLite:
    """What evaluate_loaded and the model server use of a loaded .tflite model: predict()."""

    runtime = "fake"

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.outputs[: len(x)]


def test_a_tflite_regressions_loss_is_its_mean_squared_error() -> None:
    model = FakeTFLite(np.array([[3.0], [5.0]], np.float32))
    ev = evaluate_loaded(model, np.zeros((2, 4), np.float32), np.array([1.0, 1.0]), REGRESSION)  # type: ignore[arg-type]
    assert (ev.mae, ev.rmse, ev.loss, ev.examples) == pytest.approx((3.0, math.sqrt(10), 10.0, 2))
    assert math.isnan(ev.accuracy)


# ---- on the wire ------------------------------------------------------------------------------------------


def test_round_metrics_of_a_regression_round_trip_with_their_history() -> None:
    rows = regression_rows()
    message = round_metrics_message(rows[-1], "reg", 5, rows)
    raw = unpack(message.encode())
    assert (raw["test_mae"], raw["test_rmse"]) == (20.0, 25.0) and math.isnan(raw["test_accuracy"])
    assert raw["history"][0] == {"round": 1, "test_accuracy": pytest.approx(NAN, nan_ok=True), "test_loss": 3000.0,
                                 "test_mae": 60.0, "test_rmse": 75.0}
    decoded = decode_message(message.encode())
    assert isinstance(decoded, RoundMetricsMessage) and decoded.is_regression
    assert (decoded.test_mae, decoded.test_rmse) == (20.0, 25.0)
    assert [(p["round"], p["test_mae"], p["test_rmse"]) for p in decoded.history] == \
        [(1, 60.0, 75.0), (2, 30.0, 37.5), (3, 20.0, 25.0)]


def test_a_classifications_round_metrics_have_no_regression_fields() -> None:
    rows = federated_rows()
    raw = unpack(round_metrics_message(rows[-1], "r", 4, rows).encode())
    assert "test_mae" not in raw and "test_rmse" not in raw
    assert all(set(p) == {"round", "test_accuracy", "test_loss"} for p in raw["history"])
    decoded = decode_message(pack(raw))
    assert isinstance(decoded, RoundMetricsMessage) and not decoded.is_regression and decoded.test_rmse is None


def regression_raw() -> dict[str, Any]:
    rows = regression_rows()
    return unpack(round_metrics_message(rows[-1], "reg", 5, rows).encode())


@pytest.mark.parametrize("change, pattern", [
    ({"test_mae": "20"}, "field 'test_mae' has type str"),
    ({"test_rmse": True}, "field 'test_rmse' has type bool"),
    ({"test_rmse": None}, "test_mae without test_rmse"),
    ({"test_mae": None, "test_rmse": 3.0}, "test_rmse without test_mae"),
    ({"test_mae": -1.0}, "negative test_mae or test_rmse"),
    ({"test_rmse": [1.0]}, "field 'test_rmse' has type list"),
])
def test_bad_regression_fields_are_decode_errors(change: dict[str, Any], pattern: str) -> None:
    raw = {**regression_raw(), **change}
    with pytest.raises(DecodeError, match=pattern):
        decode_message(pack(raw))


def test_a_bad_history_point_is_a_decode_error() -> None:
    raw = regression_raw()
    raw["history"][1]["test_rmse"] = "x"
    with pytest.raises(DecodeError, match="round_metrics history: field 'test_rmse' has type str"):
        decode_message(pack(raw))
    raw["history"][1].pop("test_rmse")
    with pytest.raises(DecodeError, match="test_mae without test_rmse"):
        decode_message(pack(raw))


def test_a_diverged_regressions_errors_are_reported_not_rejected() -> None:
    raw = {**regression_raw(), "test_mae": NAN, "test_rmse": math.inf}
    decoded = decode_message(pack(raw))
    assert isinstance(decoded, RoundMetricsMessage) and math.isnan(decoded.test_mae or 0.0)


def test_run_end_of_a_regression() -> None:
    end = RunEnd(**ENV, reason="completed", test_accuracy=None, test_mae=41.5, test_rmse=52.25)
    raw = unpack(end.encode())
    assert raw["test_accuracy"] is None and (raw["test_mae"], raw["test_rmse"]) == (41.5, 52.25)
    decoded = decode_message(end.encode())
    assert isinstance(decoded, RunEnd) and (decoded.test_accuracy, decoded.test_mae, decoded.test_rmse) == \
        (None, 41.5, 52.25)
    assert end.result_text() == "MAE 41.5, RMSE 52.25"
    assert RunEnd(**ENV, test_accuracy=0.91234).result_text() == "accuracy 0.9123"
    assert RunEnd(**ENV).result_text() == "accuracy n/a"
    plain = unpack(RunEnd(**ENV, reason="completed", test_accuracy=0.9).encode())
    assert "test_mae" not in plain and "test_rmse" not in plain
    with pytest.raises(DecodeError, match="run_end: field 'test_mae' has type str"):
        decode_message(pack({**raw, "test_mae": "41"}))


def regression_deployment(**changes: Any) -> DeploymentInfo:
    info = DeploymentInfo(run="reg", round=2, variant="int8", sha256="ab" * 32, size=1000,
                          input=TensorFormat((10,), "float32"), output=TensorFormat((1,), "float32"),
                          class_names=(), test_accuracy=None, test_examples=89, task="regression", test_mae=44.0,
                          test_rmse=55.5)
    return dataclasses.replace(info, **changes)


def test_a_deployed_regression_model_says_its_task_and_errors() -> None:
    message = DeployedModel(**ENV, info=regression_deployment(), model=b"\x00" * 1000)
    raw = unpack(message.encode())
    assert (raw["task"], raw["test_mae"], raw["test_rmse"], raw["class_names"]) == ("regression", 44.0, 55.5, [])
    decoded = decode_message(message.encode())
    assert isinstance(decoded, DeployedModel) and decoded.info == message.info and decoded.info.is_regression
    assert decoded.info.summary()["task"] == "regression" and decoded.info.summary()["test_rmse"] == 55.5
    assert DeploymentInfo.from_json(json.loads(json.dumps(message.info.to_json()))) == message.info
    classifier = dataclasses.replace(message.info, task="classification", test_mae=None, test_rmse=None)
    assert "task" not in classifier.fields_to_wire() and "task" not in classifier.summary()


@pytest.mark.parametrize("change, pattern", [
    ({"task": "ranking"}, "task 'ranking' is not one of classification, regression"),
    ({"task": 3}, "task is not a string"),
    ({"class_names": ["a"]}, "a regression model has no class names"),
    ({"test_rmse": "55"}, "test_rmse '55' is not a number"),
])
def test_bad_deployment_regression_fields(change: dict[str, Any], pattern: str) -> None:
    raw = {**unpack(DeployedModel(**ENV, info=regression_deployment(), model=b"\x00" * 1000).encode()), **change}
    with pytest.raises(DecodeError, match=pattern):
        decode_message(pack(raw))
    with pytest.raises(DeploymentError, match="a regression model has no class names"):
        regression_deployment(class_names=("a",))


# ---- metrics.jsonl, report, panel, baseline --------------------------------------------------------------


def test_metrics_file_keeps_a_regressions_errors_and_no_accuracy(tmp_path: Path) -> None:
    rows = regression_rows()
    line = json.loads(to_json_line(rows[0]))
    assert line["test_accuracy"] is None and (line["test_mae"], line["test_rmse"]) == (60.0, 75.0)
    path = tmp_path / "metrics.jsonl"
    for row in rows:
        append_metrics(path, row)
    back = read_metrics(path)
    assert [(m.test_mae, m.test_rmse) for m in back] == [(m.test_mae, m.test_rmse) for m in rows]
    assert all(m.is_regression and math.isnan(m.test_accuracy) for m in back)
    diverged = dataclasses.replace(rows[0], test_mae=NAN, test_rmse=NAN)
    path.write_text(to_json_line(diverged) + "\n")
    assert read_metrics(path)[0].is_regression, "a diverged regression is still a regression"


def test_report_of_a_regression_run_against_its_baseline(tmp_path: Path) -> None:
    run = make_run(tmp_path / "reg", regression_rows())
    base = make_run(tmp_path / "reg-centralized", regression_rows(scale=0.98))
    files = write_report(run, base)
    assert set(files.plots) == set(REGRESSION_PLOTS) and all(p.stat().st_size > 1000 for p in files.plots.values())
    text = files.markdown.read_text()
    assert "accuracy" not in text.lower()
    summary = {row[""]: row for row in markdown_table(text, "")}
    assert summary["final test MAE"]["federated"] == "20" and summary["final test MAE"]["centralized"] == "19.6"
    assert summary["final test RMSE"]["federated"] == "25" and summary["best test RMSE (round)"]["federated"] == "25 (3)"
    assert summary["final RMSE relative to centralized"]["federated"] == "+2.0 %"
    table = markdown_table(text, "round")
    assert [r["test RMSE"] for r in table] == ["75", "37.5", "25"]
    assert [r["centralized RMSE"] for r in table] == ["73.5", "36.75", "24.5"]
    assert "![test MAE, RMSE and loss per round](errors_loss.png)" in text


def test_report_refuses_to_compare_a_regression_with_a_classification(tmp_path: Path) -> None:
    run = make_run(tmp_path / "reg", regression_rows())
    base = make_run(tmp_path / "cls", federated_rows())
    with pytest.raises(ReportError, match="regression run but .* a classification baseline"):
        write_report(run, base)
    plain = summary_markdown(  # without a baseline: no comparison row
        __import__("coordinator.report", fromlist=["load_run"]).load_run(run, "federated"), None, {})
    assert "relative to centralized" not in plain and "| final test RMSE | 25 |" in plain


def test_the_panel_shows_a_regressions_errors() -> None:
    progress = RunProgress("reg", 3)
    progress.round_closed(regression_rows()[1])
    text = text_of(progress.render(now=0.0))
    assert re.search(r"round 2: MAE 30, RMSE 37\.5, loss 1500\.0000, 2 clients", text), text
    assert "accuracy" not in text


def test_the_baseline_compares_itself_with_the_federated_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "reg", regression_rows())
    line = compare_with_federated(run / "metrics.jsonl", regression_rows(scale=0.8))
    assert "after round 3 vs centralized round-equivalent 3: RMSE 25 vs 20 (+25.0 %), MAE 20 vs 16" in line
    cls = make_run(tmp_path / "cls", federated_rows())
    assert "accuracy 0.9000 vs 0.9000 (+0.00 points)" in compare_with_federated(cls / "metrics.jsonl",
                                                                                federated_rows())
    assert "not comparable" in compare_with_federated(cls / "metrics.jsonl", regression_rows())
    assert compare_with_federated(tmp_path / "none" / "metrics.jsonl", regression_rows()) == ""
    assert result_text(regression_rows()[2]) == "MAE 20, RMSE 25, loss 1000.0000"


# ---- what a deployed regression model answers --------------------------------------------------------------


def test_a_deployed_regression_model_answers_values(tmp_path: Path) -> None:
    from edge_client.model_store import ModelStore

    server = ModelServer(ModelStore(tmp_path))
    server._active = LoadedModel(regression_deployment(), FakeTFLite(np.array([[151.25], [75.5]], np.float32)),
                                 tmp_path / "m.tflite")  # type: ignore[arg-type]
    answer = server.predict(np.zeros((2, 10), np.float32), top=3)
    assert answer == {"model_version": "reg@2", "variant": "int8", "predictions": [{"value": 151.25},
                                                                                     {"value": 75.5}]}
    assert regression_answer(np.array([1.0, 2.5])) == {"values": [1.0, 2.5]}


def test_table_rows_and_windows_are_batches_of_their_shape() -> None:
    assert as_batch(np.ones(10), (10,), "row").shape == (1, 10)
    assert as_batch(np.ones((5, 10)), (10,), "rows").shape == (5, 10)
    assert as_batch(np.ones((5, 24, 3)), (24, 3), "windows").shape == (5, 24, 3)
    with pytest.raises(InputError, match=r"array of shape \(5, 9\) does not hold inputs of shape \(10,\)"):
        as_batch(np.ones((5, 9)), (10,), "rows")
    with pytest.raises(InputError, match="is not numbers"):
        as_batch(np.array(["a"] * 10), (10,), "rows")


def test_history_points_carry_each_rounds_elapsed_time_for_a_curve_over_time() -> None:
    """Issue 13: the dashboard draws accuracy over wall-clock time from the one retained message."""
    rows = [dataclasses.replace(m, elapsed_s=12.5 * m.round) for m in federated_rows()]
    raw = unpack(round_metrics_message(rows[-1], "r", 4, rows).encode())
    assert [p["elapsed_s"] for p in raw["history"]] == [12.5, 25.0, 37.5, 50.0]
    decoded = decode_message(pack(raw))
    assert isinstance(decoded, RoundMetricsMessage)
    assert [(p["round"], p["elapsed_s"]) for p in decoded.history] == [(1, 12.5), (2, 25.0), (3, 37.5), (4, 50.0)]
    raw["history"][2]["elapsed_s"] = "37.5"
    with pytest.raises(DecodeError, match="round_metrics history: field 'elapsed_s' has type str"):
        decode_message(pack(raw))
