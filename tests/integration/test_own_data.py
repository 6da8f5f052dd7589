"""End to end with a table: a real Mosquitto, a coordinator evaluating on its own CSV split of scikit-learn's
breast-cancer table, and real devices training on their own CSV parts (other column orders, extra columns).

A device whose CSV lacks a column the coordinator names refuses the model: its status says why, the coordinator
logs it, the run goes on without it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from demo.local_federation import LocalFederation

pytestmark = pytest.mark.timeout(420)


def _write_csv(path: Path, columns: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _breast_cancer_parts(folder: Path) -> dict[str, Path]:
    """The real table (569 rows, 30 features, 'benign'/'malignant') in shuffled parts: 40% for the coordinator,
    30% for each of two devices (one with its columns reversed and a column of notes), and a third device's file
    without the 'mean radius' column."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in table.feature_names]
    labels = [str(table.target_names[t]) for t in table.target]
    order = np.random.default_rng(7).permutation(len(labels))
    rows = [[*map(float, table.data[i]), labels[i]] for i in order]
    cut1, cut2 = int(0.4 * len(rows)), int(0.7 * len(rows))
    columns = [*names, "diagnosis"]
    reversed_rows = [[f"clinic-{i % 3}", *row[::-1]] for i, row in enumerate(rows[cut1:cut2])]
    return {
        "coordinator": _write_csv(folder / "hospital.csv", columns, rows[:cut1]),
        "dev-1": _write_csv(folder / "clinic1.csv", ["notes", *columns[::-1]], reversed_rows),
        "dev-2": _write_csv(folder / "clinic2.csv", columns, rows[cut2:]),
        "dev-3": _write_csv(folder / "clinic3.csv", columns[1:], [row[1:] for row in rows[cut2:]]),
    }


def test_two_devices_train_a_dense_classifier_on_their_own_csv_parts(federation: LocalFederation,
                                                                     tmp_path: Path) -> None:
    fed = federation
    files = _breast_cancer_parts(tmp_path)
    fed.start_coordinator({
        "model.name": "dense_classifier", "model.dataset": files["coordinator"],
        "data.label": "diagnosis", "data.scaling": "standard", "data.test_fraction": 0.5,
        "training.rounds": 3, "training.local_epochs": 5, "training.batch_size": 16,
        "quorum.min_clients": 2, "quorum.round_deadline_s": 120, "deploy.enabled": False,
    })
    for client_id in ("dev-1", "dev-2", "dev-3"):
        fed.start_client(client_id, ["--dataset", str(files[client_id])])
    codes = fed.wait_all(360)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0, "dev-3": 3}, codes

    device_rows = {k: len(files[k].read_text().splitlines()) - 1 for k in ("dev-1", "dev-2")}
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["client_ids"] == ["dev-1", "dev-2"], "dev-3 can't train: never in a round"
        assert r["examples"] == sum(device_rows.values()) == 342
    assert rows[-1]["test_accuracy"] > 0.9, rows  # 114 held-out rows of the coordinator's 227
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]

    coordinator_log = fed.procs["coordinator"].log_path.read_text()
    assert "client dev-3 can't train this run's model" in coordinator_log
    assert "lacks the column(s) 'mean_radius'" in coordinator_log
    dev1_log = fed.procs["dev-1"].log_path.read_text()
    assert f"{device_rows['dev-1']} local examples (clinic1.csv)" in dev1_log and "Traceback" not in dev1_log
    dev3_log = fed.procs["dev-3"].log_path.read_text()
    assert "lacks the column(s) 'mean_radius'" in dev3_log and "Traceback" not in dev3_log
