"""A regression model through the coordinator's release path, on a real table (scikit-learn's diabetes data, bundled
in its wheel): the Keras evaluation's MAE and RMSE, the float32, dynamic and int8 TFLite exports evaluated on the
same rows (int8 calibrated on table rows), the deployment that says its task, a model server answering values, and
`python -m edge_client predict` printing them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from broker import free_port
from coordinator.evaluation import REGRESSION, evaluate_keras, regression_errors, task_of_model
from federation.protocol.model_delivery import DeliveryReceiver
from tests.deploy_support import http
from tests.support import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

VARIANTS = ["float32", "dynamic", "int8"]


def diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The diabetes table (442 patients, 10 features, disease progression a year later), standardized with the
    training rows' statistics; 350 rows to train on, 92 to test."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    x, y = x.astype(np.float32), y.astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    mean, std = x[:350].mean(0), x[:350].std(0)
    x = (x - mean) / std
    return x[:350], y[:350], x[350:], y[350:]


@pytest.fixture(scope="module")
def trained() -> tuple[object, np.ndarray, np.ndarray]:
    import keras

    x, y, x_test, y_test = diabetes()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mean_squared_error")
    model.fit(x, y, epochs=80, batch_size=32, verbose=0)
    return model, x_test, y_test


def test_keras_evaluation_of_a_regression_is_numpys_mae_and_rmse(trained) -> None:
    model, x_test, y_test = trained
    assert task_of_model(model) == REGRESSION
    ev = evaluate_keras(model, x_test, y_test, 32, REGRESSION)
    pred = model.predict(x_test, verbose=0)[:, 0].astype(np.float64)
    assert ev.is_regression and ev.final_accuracy is None and ev.examples == len(y_test)
    assert ev.mae == pytest.approx(np.abs(pred - y_test).mean(), rel=1e-5)
    assert ev.rmse == pytest.approx(np.sqrt(((pred - y_test) ** 2).mean()), rel=1e-5)
    assert ev.loss == pytest.approx(ev.rmse ** 2, rel=1e-3), "the compiled loss, mean squared error"
    baseline_rmse = float(np.sqrt(((y_test - y_test.mean()) ** 2).mean()))
    assert ev.rmse < 0.85 * baseline_rmse, "the model learned something beyond the mean"


class FakeLink:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish_and_wait(self, topic: str, payload: bytes, **kwargs: object) -> bool:
        self.published.append((topic, payload))
        return True

    def publish(self, topic: str, payload: bytes, **kwargs: object) -> None:
        self.published.append((topic, payload))


def test_exports_deployment_and_serving_of_a_regression(trained, tmp_path: Path) -> None:
    from coordinator.deploy import Deployer
    from coordinator.evaluation import evaluate_keras
    from coordinator.export import RMSE_BOUND_PERCENT
    from coordinator.release import Release
    from edge_client.model_store import ModelStore
    from edge_client.serve import ModelServer, _HTTPServer
    from federation.config.settings import settings_from_dict
    from federation.protocol.topics import RunTopics
    from federation.inference.runtime import TFLiteClassifier

    model, x_test, y_test = trained
    keras_ev = evaluate_keras(model, x_test, y_test, 32, REGRESSION)
    settings = settings_from_dict({"run": {"name": "reg"}, "export": {"tflite": VARIANTS},
                                   "deploy": {"variant": "int8"}})
    topics, link = RunTopics("fedmq", "reg"), FakeLink()
    deployer = Deployer(settings, link, topics, "coordinator", (), REGRESSION)  # type: ignore[arg-type]
    release = Release(settings, tmp_path, (), deployer)
    out = release.export(model, x_test, y_test, keras_ev)
    assert list(out) == VARIANTS
    for variant, entry in out.items():
        assert "accuracy" not in entry and entry["examples"] == len(y_test)
        assert entry["within_bound"], (variant, entry, keras_ev)
        assert entry["rmse_delta_percent"] <= RMSE_BOUND_PERCENT[variant]
        loaded = TFLiteClassifier(tmp_path / entry["path"])
        assert loaded.output_format.dtype == "float32", "a regression's int8 variant still returns values"
        assert loaded.input_format.dtype == "float32", "table rows go in as float features, int8 included"
        assert (entry["mae"], entry["rmse"]) == pytest.approx(regression_errors(loaded.predict(x_test), y_test))
    assert out["float32"]["rmse"] == pytest.approx(keras_ev.rmse, rel=1e-4)

    record = release.deploy(3, keras_ev)
    assert record is not None and record["test_mae"] == out["int8"]["mae"] and record["test_accuracy"] is None
    receiver = DeliveryReceiver(topics)
    delivered = [got for topic, payload in link.published if (got := receiver.handle(topic, payload)) is not None]
    info = delivered[-1].info
    assert (info.task, info.class_names, info.test_accuracy, info.keras_accuracy) == (REGRESSION, (), None, None)
    assert (info.test_mae, info.test_rmse) == (out["int8"]["mae"], out["int8"]["rmse"])

    server = ModelServer(ModelStore(tmp_path / "serve"))
    assert server.install(info, delivered[-1].content), server.deploy_error
    expected = TFLiteClassifier(delivered[-1].content).predict(x_test[:5])[:, 0]
    httpd = _HTTPServer(("127.0.0.1", free_port()), server, lambda: {})
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code, body = http(f"http://127.0.0.1:{httpd.server_address[1]}/predict",
                          json.dumps({"instances": x_test[:5].tolist()}).encode())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 200, body
    assert body["model_version"] == "reg@3" and [set(p) for p in body["predictions"]] == [{"value"}] * 5
    assert [p["value"] for p in body["predictions"]] == pytest.approx(expected, abs=1e-4)
    keras_values = model.predict(x_test[:5], verbose=0)[:, 0]
    assert np.abs(np.array([p["value"] for p in body["predictions"]]) - keras_values).max() < 0.1 * y_test.std()

    # `predict` on the exported file prints values, and the errors when the .npz holds targets
    (tmp_path / "summary.json").write_text(json.dumps({"task": "regression", "class_names": []}))
    np.savez(tmp_path / "rows.npz", x=x_test[:20], y=y_test[:20])
    done = subprocess.run([sys.executable, "-m", "edge_client", "predict", str(tmp_path / "model.tflite"),
                           str(tmp_path / "rows.npz"), "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["model"]["task"] == "regression" and len(doc["predictions"]) == 20
    values = np.array([p["value"] for p in doc["predictions"]])
    assert doc["mae"] == pytest.approx(np.abs(values - y_test[:20]).mean(), rel=1e-4)


def test_evaluate_prints_a_saved_regressions_errors(trained, tmp_path: Path) -> None:
    """`python -m coordinator evaluate` on a .keras file compiled with a regression loss, and on its .tflite, with
    an .npz of test rows: the model's recipe (or --task) makes it MAE and RMSE."""
    from coordinator.export import export_tflite

    model, x_test, y_test = trained
    model.save(tmp_path / "regressor.keras")
    export_tflite(model, tmp_path, "float32", task=REGRESSION)
    np.savez(tmp_path / "rows.npz", x=x_test, y=y_test.round(), x_test=x_test, y_test=y_test.round())
    keras_ev = evaluate_keras(model, x_test, y_test.round(), 32, REGRESSION)
    for model_file, extra in (("regressor.keras", []), ("model.tflite", ["--task", "regression"])):
        done = subprocess.run([sys.executable, "-m", "coordinator", "evaluate", str(tmp_path / model_file),
                               "--dataset", str(tmp_path / "rows.npz"), *extra], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"test MAE {keras_ev.mae:.4g}, RMSE {keras_ev.rmse:.4g}, loss" in done.stdout, done.stdout
        assert f"on {len(y_test)} examples of rows" in done.stdout


def test_the_centralized_baseline_of_a_regression_and_its_report(tmp_path: Path) -> None:
    """`baseline` trains a regression model ([model] path, compiled with mse) on an .npz of float targets: rows
    with MAE and RMSE and no accuracy, a summary that says regression, and a report of its errors."""
    import keras

    from coordinator.baseline import run_baseline
    from coordinator.report import REGRESSION_PLOTS, write_report
    from federation.config.settings import settings_from_dict

    x, y, x_test, y_test = diabetes()
    np.savez(tmp_path / "diabetes.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.save(tmp_path / "regressor.keras")
    settings = settings_from_dict({"run": {"name": "reg", "output_dir": tmp_path / "runs"},
                                   "model": {"path": tmp_path / "regressor.keras",
                                             "dataset": tmp_path / "diabetes.npz"},
                                   "training": {"rounds": 3, "local_epochs": 10, "batch_size": 32}})
    result = run_baseline(settings)
    rmse = [row.test_rmse for row in result.rows]
    assert all(row.is_regression and np.isnan(row.test_accuracy) for row in result.rows)
    assert rmse[-1] < rmse[0] and rmse[-1] < float(np.sqrt(((y_test - y_test.mean()) ** 2).mean())), rmse
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["task"] == "regression" and summary["keras"]["accuracy"] is None
    assert summary["keras"]["rmse"] == pytest.approx(rmse[-1])
    files = write_report(result.run_dir)
    assert set(files.plots) == set(REGRESSION_PLOTS) and "| final test RMSE |" in files.markdown.read_text()
