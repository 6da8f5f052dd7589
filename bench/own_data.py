"""Own-data benchmarks: devices training on their own CSV files, against centralized training with the same epochs.

  table       scikit-learn's breast-cancer table (569 rows, 30 features): 3 devices with CSV parts, the
              coordinator with its own reference file and a held-out test file; dense_classifier.
              Target: federated accuracy within 1 point of centralized.
  regression  scikit-learn's diabetes table (442 rows, 10 features, a float target): 3 devices; a Dense
              regressor given as [model] builder (needs the builder and regression-evaluation work of issue 12).
              Target: federated RMSE within 5 % of centralized.
  series      simulated office sensors (demo.room_sensors, SIMULATED data): one room per device, a fourth room
              for the coordinator; occupancy from 30-minute windows; conv1d_classifier.

Centralized training uses the union of the devices' examples, the same model, initial seed, batch size, learning
rate and rounds x local epochs, and is evaluated on the same test examples as the federated run."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT, print_table, round_table, run_for_bench, write_results

sys.path.insert(0, str(REPO_ROOT))

NAME = "own_data"
EXAMPLES = ("table", "regression", "series")


@dataclass
class Example:
    """One benchmark: the files it writes, the coordinator's settings and the devices' flags."""

    name: str
    coordinator: dict[str, Any]
    device_files: list[Path]
    metric: str                     # "accuracy" (higher is better) or "rmse"
    overrides: dict[str, Any] = field(default_factory=dict)


def _write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _sklearn_parts(folder: Path, loader: str, label: str, devices: int, seed: int,
                   named_labels: bool) -> tuple[Path, Path, list[Path]]:
    """A scikit-learn table shuffled and cut into the coordinator's reference file (20 %), a test file (30 %)
    and `devices` equal device files (the other 50 %); the devices' columns are in reversed order."""
    import numpy as np
    import sklearn.datasets

    table = getattr(sklearn.datasets, loader)()
    names = [str(n).replace(" ", "_") for n in table.feature_names]
    target = [str(table.target_names[t]) if named_labels else float(t) for t in table.target]
    order = np.random.default_rng(seed).permutation(len(target))
    rows = [[*map(float, table.data[i]), target[i]] for i in order]
    columns = [*names, label]
    ref, test = int(0.2 * len(rows)), int(0.5 * len(rows))
    reference = _write_csv(folder / "coordinator.csv", columns, rows[:ref])
    test_file = _write_csv(folder / "test.csv", columns, rows[ref:test])
    parts = np.array_split(np.arange(test, len(rows)), devices)
    device_files = [_write_csv(folder / f"device{k + 1}.csv", columns[::-1], [rows[i][::-1] for i in part])
                    for k, part in enumerate(parts)]
    return reference, test_file, device_files


def table_example(folder: Path, args: argparse.Namespace) -> Example:
    reference, test_file, devices = _sklearn_parts(folder, "load_breast_cancer", "diagnosis", args.devices,
                                                   args.seed, named_labels=True)
    return Example("table", {
        "model.name": "dense_classifier", "model.dataset": str(reference), "data.label": "diagnosis",
        "data.scaling": "standard", "data.test_file": str(test_file),
        "training.rounds": "10", "training.local_epochs": "2", "training.batch_size": "16",
    }, devices, "accuracy")


def regression_example(folder: Path, args: argparse.Namespace) -> Example:
    reference, test_file, devices = _sklearn_parts(folder, "load_diabetes", "progression", args.devices, args.seed,
                                                   named_labels=False)
    return Example("regression", {
        "model.builder": "bench.own_data:dense_regressor", "model.dataset": str(reference),
        "data.label": "progression", "data.scaling": "standard", "data.test_file": str(test_file),
        "training.rounds": "20", "training.local_epochs": "5", "training.batch_size": "16",
        "training.learning_rate": "0.005",
    }, devices, "rmse")


def series_example(folder: Path, args: argparse.Namespace) -> Example:
    from demo.room_sensors import write_csv

    days = args.series_days
    reference = write_csv(folder / "room_coordinator.csv", days, seed=100 + args.seed)
    devices = [write_csv(folder / f"room{k + 1}.csv", days, seed=k + 1 + args.seed) for k in range(args.devices)]
    return Example("series", {
        "model.name": "conv1d_classifier", "model.dataset": str(reference), "data.kind": "series",
        "data.label": "occupancy", "data.features": ["outdoor_c", "indoor_c", "heater_on", "co2_ppm", "humidity_pct"],
        "data.scaling": "standard", "data.window": "30", "data.stride": "5", "data.test_fraction": "0.5",
        "training.rounds": "5", "training.local_epochs": "1", "training.batch_size": "64",
    }, devices, "accuracy")


def dense_regressor(input_shape: tuple[int, ...], outputs: int = 1) -> Any:
    """The regression example's model, for [model] builder = "bench.own_data:dense_regressor"."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape), layers.Dense(32, activation="relu"),
                              layers.Dense(16, activation="relu"), layers.Dense(1)], name="dense_regressor")
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="mse", metrics=["mae"])
    return model


def centralized(example: Example, settings_overrides: dict[str, Any]) -> dict[str, float]:
    """Train the example's model on the union of the devices' examples with the federated run's epochs."""
    import keras
    import numpy as np

    from coordinator.evaluation import table_options
    from federation.config.settings import load_settings
    from federation.learning.datasets import load_dataset
    from federation.learning.models import build_model, compile_model
    from federation.learning.own_data import examples_for_schema
    from federation.learning.tables import read_csv_table

    s = load_settings(REPO_ROOT / "config" / "default.toml", _typed(settings_overrides))
    task = "regression" if example.metric == "rmse" else "classification"
    dataset = load_dataset(s.model.dataset, table=table_options(s.data), task=task)
    assert dataset.schema is not None
    parts = [examples_for_schema(read_csv_table(f), dataset.schema, task, dataset.class_names)
             for f in example.device_files]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keras.utils.set_random_seed(s.model.seed)
    if task == "regression":
        model = dense_regressor(dataset.input_shape)
    else:
        model = build_model(s.model.name, dataset.input_shape, dataset.num_classes)
        compile_model(model, s.training.optimizer, s.training.learning_rate)
    epochs = s.training.rounds * s.training.local_epochs
    model.fit(x, y, epochs=epochs, batch_size=s.training.batch_size, shuffle=True, verbose=0)
    if task == "regression":
        predicted = model.predict(dataset.x_test, verbose=0).reshape(-1)
        return {"rmse": float(np.sqrt(np.mean((predicted - dataset.y_test) ** 2))),
                "mae": float(np.mean(np.abs(predicted - dataset.y_test))), "train_examples": len(y),
                "epochs": epochs}
    loss, accuracy = model.evaluate(dataset.x_test, dataset.y_test, verbose=0)
    return {"accuracy": float(accuracy), "loss": float(loss), "train_examples": len(y), "epochs": epochs}


def _typed(overrides: dict[str, Any]) -> dict[str, Any]:
    """Command-line strings as the settings' types (load_settings checks types)."""
    from federation.config.settings import SECTIONS
    import typing

    typed: dict[str, Any] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        hint = typing.get_type_hints(SECTIONS[section])[key]
        if hint is bool:
            typed[dotted] = str(value).lower() in ("1", "true", "yes", "on")
        else:
            typed[dotted] = value if isinstance(value, list) or hint is str else hint(value)
    return typed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/own_data.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run from the repository root. Exit code: 0 PASS, 1 FAIL, 2 a run failed.")
    p.add_argument("examples", nargs="*", choices=EXAMPLES, default=["table"], help="which examples (default table)")
    p.add_argument("--devices", type=int, default=3, help="devices, each with its own file (default 3)")
    p.add_argument("--seed", type=int, default=0, help="how the tables are shuffled and the rooms simulated")
    p.add_argument("--series-days", type=int, default=7, help="days of sensor rows per room (default 7)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="output folder")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per federated run (default 1800)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve() / NAME
    makers = {"table": table_example, "regression": regression_example, "series": series_example}
    results: dict[str, Any] = {}
    verdict = 0
    for name in args.examples:
        example = makers[name](out / name / "data", args)
        overrides = {**example.coordinator, "quorum.min_clients": str(len(example.device_files)),
                     "deploy.enabled": "false"}
        clients = [["--dataset", str(f), "--client-id", f"device-{k + 1}"] for k, f in enumerate(example.device_files)]
        if name == "table":   # through the Python APIs: run_coordinator here, start_client in each device process
            from demo.python_api import run_federation

            started = time.monotonic()
            _, metrics = run_federation(example.device_files, _typed(overrides), out / name, f"{NAME}_{name}",
                                        args.timeout)
            wall_s, federated_json = time.monotonic() - started, {"metrics": metrics, "api": "python"}
        else:
            outcome = run_for_bench(clients, overrides, out / name, f"{NAME}_{name}", args.timeout)
            if outcome is None:
                return 2
            report, wall_s = outcome
            metrics, federated_json = report.metrics, report.to_json()
        print(f"\n## {name}: {len(clients)} devices, federated (wall {wall_s:.0f} s"
              f"{', Python API' if name == 'table' else ''})\n")
        print_table(*round_table(metrics))
        central = centralized(example, overrides)
        last = metrics[-1]
        if example.metric == "rmse":
            federated = float(last.get("test_rmse", float("nan")))
            passed = federated <= 1.05 * central["rmse"]
            line = f"federated RMSE {federated:.2f} vs centralized {central['rmse']:.2f} (target: within 5 %)"
        else:
            federated = float(last["test_accuracy"])
            passed = federated >= central["accuracy"] - 0.01
            line = (f"federated accuracy {federated:.4f} vs centralized {central['accuracy']:.4f} with "
                    f"{central['epochs']} epochs on the same {central['train_examples']} examples (target: within "
                    "1 point)")
        if name == "series":  # the issue sets no target for the series: a measurement only
            line = line.replace(" (target: within 1 point)", "")
            print(f"\n{name}: {line} (measured; no target)")
        else:
            print(f"\n{name}: {line}: {'PASS' if passed else 'FAIL'}")
            verdict = verdict or (0 if passed else 1)
        results[name] = {"federated": federated_json, "centralized": central, "passed": passed,
                         "coordinator_overrides": overrides, "device_files": [str(f) for f in example.device_files]}
    path = write_results(args.out.resolve() / f"{NAME}_{'_'.join(args.examples)}.json", results)
    print(f"\nresults: {path}")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
