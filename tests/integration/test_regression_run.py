"""Regression end to end: a real Mosquitto, a coordinator and two devices training a small Dense regression model
(from a .keras file: the devices build it from the wire) on halves of scikit-learn's diabetes table saved as .npz;
then the TFLite export and a `python -m edge_client serve` process answering values over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from broker import free_port
from demo.local_federation import LocalFederation
from federation.inference.runtime import TFLiteClassifier
from federation.protocol.codec import unpack
from tests.deploy_support import http, serve_status, start_serve, stop
from tests.support import retained_messages, wait_for

pytestmark = pytest.mark.timeout(420)

ROUNDS = 4


def write_diabetes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The diabetes table standardized with the training rows' statistics: two device halves of 175 rows as .npz
    (x, y), and the coordinator's file with its 92 test rows (x_test, y_test). Returns the test rows."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.float32)
    mean, std = x[:350].mean(0), x[:350].std(0)
    x = ((x - mean) / std).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "device-1.npz", x=x[:175], y=y[:175])
    np.savez(folder / "device-2.npz", x=x[175:350], y=y[175:350])
    np.savez(folder / "coordinator.npz", x=x[:350], y=y[:350], x_test=x[350:], y_test=y[350:])
    return x[350:], y[350:]


def write_model(path: Path) -> None:
    """A compiled Dense regression model (mean squared error, Adam 0.02) in a .keras file: not in any registry."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mean_squared_error", metrics=["mae"])
    model.save(path)


def test_a_regression_runs_end_to_end_through_tflite_export_and_serve(federation: LocalFederation,
                                                                      tmp_path: Path) -> None:
    fed = federation
    x_test, y_test = write_diabetes(tmp_path / "data")
    write_model(tmp_path / "regressor.keras")
    http_port = free_port()
    serve_log = tmp_path / "serve.log"
    serve = start_serve(sys.executable, fed.port, "it", "pi-serve", tmp_path / "served", http_port, serve_log)
    try:
        fed.start_coordinator({
            "model.path": tmp_path / "regressor.keras", "model.dataset": tmp_path / "data" / "coordinator.npz",
            "training.rounds": ROUNDS, "training.local_epochs": 5, "training.batch_size": 16,
            "quorum.min_clients": 2, "quorum.round_deadline_s": 120,
            "export.tflite": ["float32", "int8"], "deploy.variant": "int8",
        })
        for k in (1, 2):
            fed.start_client(f"dev-{k}", ["--dataset", str(tmp_path / "data" / f"device-{k}.npz")])
        codes = fed.wait_all(300)
        assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, (codes, fed.procs["coordinator"].log_tail())

        # Every round is evaluated by MAE and RMSE, without accuracy; the model learns beyond the mean.
        rows = fed.metrics()
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        assert all(r["test_accuracy"] is None and r["test_mae"] > 0 and r["test_rmse"] >= r["test_mae"] for r in rows)
        mean_rmse = float(np.sqrt(((y_test - y_test.mean()) ** 2).mean()))
        assert rows[-1]["test_rmse"] < rows[0]["test_rmse"] and rows[-1]["test_rmse"] < 0.9 * mean_rmse, rows
        log = (fed.workdir / "logs" / "coordinator.log").read_text()
        assert f"round {ROUNDS}/{ROUNDS}: 2 clients" in log and f"test MAE {rows[-1]['test_mae']:.4g}" in log

        summary = fed.summary()
        assert summary["task"] == "regression" and summary["keras"]["accuracy"] is None
        assert summary["keras"]["rmse"] == pytest.approx(rows[-1]["test_rmse"])
        for variant in ("float32", "int8"):
            assert summary["tflite"][variant]["within_bound"], summary["tflite"]
        end = unpack(retained_messages(fed.port, "fedmq/it/end")["fedmq/it/end"])
        assert end["test_accuracy"] is None and end["test_rmse"] == pytest.approx(rows[-1]["test_rmse"])
        metrics = unpack(retained_messages(fed.port, "fedmq/it/metrics")["fedmq/it/metrics"])
        assert [p["test_rmse"] for p in metrics["history"]] == pytest.approx([r["test_rmse"] for r in rows])

        # The inference-only device serves the int8 model and answers values, as the exported file computes them.
        deployed = lambda: (serve_status(http_port)["deployed"] or {})
        wait_for("the regression model on the serve process",
                 lambda: deployed().get("model_version") == f"it@{ROUNDS}", 60, log=serve_log)
        assert deployed()["task"] == "regression" and deployed()["test_rmse"] == summary["tflite"]["int8"]["rmse"]
        code, body = http(f"http://127.0.0.1:{http_port}/predict",
                          json.dumps({"instances": x_test[:8].tolist()}).encode())
        assert code == 200, body
        values = [p["value"] for p in body["predictions"]]
        expected = TFLiteClassifier(fed.run_dir / "model_int8.tflite").predict(x_test[:8])[:, 0]
        assert values == pytest.approx(expected.tolist(), abs=1e-3)
    finally:
        stop(serve)
