"""The device simulator (`python -m edge_client simulate`) against a real Mosquitto and the real coordinator: a few
hundred simulated devices in two processes complete every round, and its counts match the coordinator's metrics
exactly; an announcement storm (the broker restarted, every device back at once) loses no birth."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from demo.local_federation import LocalFederation
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)

COORDINATOR = {"model.name": "dense_classifier", "model.dataset": "fashion_mnist", "evaluation.max_examples": 200,
               "export.tflite": ["float32"], "deploy.enabled": "false", "quorum.round_deadline_s": 120,
               "quorum.start_grace_s": 0.5}


def _simulate(fed: LocalFederation, tmp_path: Path, clients: int, *flags: str) -> Path:
    summary = tmp_path / "summary.json"
    fed.spawn("simulator", [sys.executable, "-m", "edge_client", "simulate", "--broker",
                            f"mqtt://127.0.0.1:{fed.port}", "--run", fed.run_name, "--clients", str(clients),
                            "--summary", str(summary), "--report-every", "2", *flags])
    return summary


def _per_round(summary: dict[str, Any], key: str, rounds: int) -> list[int]:
    return [summary[key].get(str(r), 0) for r in range(1, rounds + 1)]


def _ignored(rows: list[dict[str, Any]]) -> int:
    return sum(n for r in rows for n in (r.get("ignored") or {}).values())


def test_300_simulated_devices_complete_every_round_and_every_update_is_counted(
        federation: LocalFederation, tmp_path: Path) -> None:
    fed, n, rounds = federation, 300, 3
    summary_path = _simulate(fed, tmp_path, n, "--processes", "2", "--train-seconds", "0.5", "--train-spread", "0.3",
                             "--examples", "50:500", "--connect-rate", "500")
    fed.start_coordinator({**COORDINATOR, "training.rounds": rounds, "quorum.min_clients": n // 2,
                           "sampling.min_available_clients": n})
    codes = fed.wait_all(200)
    assert codes == {"simulator": 0, "coordinator": 0}, codes
    summary = json.loads(summary_path.read_text())
    rows = fed.metrics()
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    # Every round started with the whole fleet online (sampling.min_available_clients), so all were asked.
    assert [r["cohort"] for r in rows] == [n] * rounds
    # Births: one per device, every one acknowledged by the broker (PUBACK).
    assert summary["births_confirmed"] == summary["births_published"] == n
    assert summary["left"] == summary["devices"] == n and summary["connected"] == 0
    # Updates: every one published was acknowledged and aggregated, in its round; nothing rejected or ignored.
    acked = _per_round(summary, "updates_acknowledged", rounds)
    assert acked == _per_round(summary, "updates_published", rounds) == [r["clients"] for r in rows] == [n] * rounds
    assert not summary["resends_published"] and _ignored(rows) == 0
    assert all(not r["rejected"] for r in rows), [r["rejected"] for r in rows]
    # The coordinator's examples are the devices' seeded num_examples (50 to 500 each).
    assert all(50 * n <= r["examples"] <= 500 * n for r in rows)
    assert summary["models_received"] == n * rounds
    assert summary["bytes_out"] > n * rounds * 200_000   # dense_classifier: 52,650 float32 weights per update


def test_devices_that_die_mid_round_fire_their_will_come_back_and_are_counted(federation: LocalFederation,
                                                                              tmp_path: Path) -> None:
    fed, n, rounds = federation, 100, 3
    summary_path = _simulate(fed, tmp_path, n, "--train-seconds", "0.5", "--failure-rate", "0.1",
                             "--rejoin-seconds", "0.5", "--seed", "3")
    fed.start_coordinator({**COORDINATOR, "training.rounds": rounds, "quorum.min_clients": n // 2,
                           "sampling.min_available_clients": n})
    codes = fed.wait_all(200)
    assert codes == {"simulator": 0, "coordinator": 0}, codes
    summary = json.loads(summary_path.read_text())
    rows = fed.metrics()
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert summary["failures"] > 0 and summary["rejoins"] == summary["failures"]
    assert summary["births_confirmed"] == summary["births_published"] >= n + summary["failures"]
    # The wills fired: beyond 20 clients the coordinator logs departures in its summary lines, "(+3 came, 2 left)".
    assert re.search(r"\(\+\d+ came, [1-9]\d* left\)", fed.procs["coordinator"].log_path.read_text())
    assert all(not r["rejected"] for r in rows), [r["rejected"] for r in rows]
    # Acknowledged updates are aggregated or ignored as late (a device back in a round that had closed); one for
    # the last round that arrives after it closed is counted in summary.json's after_last_round if it came before
    # the coordinator's last read, and in nothing if it came later.
    delivered = sum(summary["updates_acknowledged"].values()) + sum(summary["resends_acknowledged"].values())
    after = fed.summary()["after_last_round"]
    assert not after["rejected"], after
    counted = sum(r["clients"] for r in rows) + _ignored(rows) + sum(after["ignored"].values())
    assert 0 <= delivered - counted <= summary["failures"]
    assert summary["left"] == n


def test_an_announcement_storm_after_a_broker_restart_loses_no_birth(federation: LocalFederation,
                                                                     tmp_path: Path) -> None:
    fed, n, rounds = federation, 200, 3
    assert fed.broker is not None
    summary_path = _simulate(fed, tmp_path, n, "--train-seconds", "4", "--connect-rate", "0",
                             "--reconnect-jitter", "0")
    fed.start_coordinator({**COORDINATOR, "training.rounds": rounds, "quorum.min_clients": n,
                           "sampling.min_available_clients": n})
    wait_for("round 1 to close", lambda: (fed.run_dir / "metrics.jsonl").is_file() and fed.metrics(), 150,
             log=fed.procs["coordinator"].log_path, interval=0.05)
    fed.broker.stop()   # round 2 is training: every device loses its connection, then all come back at once
    fed.broker.start()
    codes = fed.wait_all(200)
    assert codes == {"simulator": 0, "coordinator": 0}, codes
    summary = json.loads(summary_path.read_text())
    rows = fed.metrics()
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    # The coordinator saw all n online again: round 3 could only start with all n (min_available_clients).
    assert [r["cohort"] for r in rows] == [n] * rounds
    assert [r["clients"] for r in rows] == [n] * rounds
    assert all(not r["rejected"] for r in rows), [r["rejected"] for r in rows]
    # No birth lost: every device announced itself again after the restart, and the broker acknowledged each one.
    assert summary["reconnects"] >= n
    assert summary["births_published"] >= 2 * n
    assert summary["births_confirmed"] == summary["births_published"]
    # Updates: round 2's model came again after the restart, so each device re-sent its round-2 update once; the
    # coordinator counted the first copy and ignored the rest.
    assert _per_round(summary, "updates_acknowledged", rounds) == [n] * rounds
    assert sum(summary["resends_acknowledged"].values()) == _ignored(rows)
