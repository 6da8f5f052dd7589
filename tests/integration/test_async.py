"""Asynchronous buffered aggregation (FedBuff) with real processes over a real Mosquitto: two fast devices and one
slowed down 5 times. The fast ones take part in several versions; the slow one's stale update is weighted by its
staleness, or refused as `stale` when it is older than max_staleness."""

from __future__ import annotations

import re

import pytest

from demo.local_federation import LocalFederation

pytestmark = pytest.mark.timeout(500)

DATA = ["--dataset", "fashion_mnist", "--max-examples", "3000"]
VERSIONS = 10


def run_uneven_fleet(fed: LocalFederation, max_staleness: int, versions: int = VERSIONS) -> tuple[list[dict], str]:
    fed.start_coordinator({"training.rounds": versions, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                           "evaluation.max_examples": 500, "aggregation.mode": "async",
                           "aggregation.buffer_size": 2, "aggregation.max_staleness": max_staleness})
    fed.start_client("fast-1", [*DATA, "--partition", "1/3"])
    fed.start_client("fast-2", [*DATA, "--partition", "2/3"])
    fed.start_client("slow", [*DATA, "--partition", "3/3", "--slowdown", "5"])
    codes = fed.wait_all(420)
    assert codes == {"coordinator": 0, "fast-1": 0, "fast-2": 0, "slow": 0}, codes
    return fed.metrics(), fed.procs["coordinator"].log_path.read_text()


def test_async_weights_a_slow_devices_stale_update(federation: LocalFederation) -> None:
    rows, log = run_uneven_fleet(federation, max_staleness=VERSIONS)
    assert [r["round"] for r in rows] == list(range(1, VERSIONS + 1))
    assert all(r["clients"] == 2 and r["aggregation"]["mode"] == "async" for r in rows)
    fast_versions = [sum(f in r["client_ids"] for r in rows) for f in ("fast-1", "fast-2")]
    assert min(fast_versions) >= 3, f"the fast devices took part in several versions: {fast_versions}"
    stale = [r for r in rows if r["aggregation"]["stale_updates"]]
    assert stale, "the slow device's update arrived after the model had moved on"
    assert any("slow" in r["client_ids"] for r in stale)
    assert max(r["aggregation"]["staleness_max"] for r in rows) >= 2
    weighted = re.findall(r"slow's update was trained on version \d+ \(staleness (\d+)\): weighted ([0-9.]+)", log)
    assert weighted, log[-3000:]
    for staleness, weight in weighted:
        assert float(weight) == pytest.approx((1 + int(staleness)) ** -0.5, abs=1e-3)
    assert rows[-1]["test_accuracy"] > 0.55
    assert all(r["elapsed_s"] > 0 for r in rows) and [r["elapsed_s"] for r in rows] == \
        sorted(r["elapsed_s"] for r in rows)


def test_async_refuses_updates_older_than_max_staleness(federation: LocalFederation) -> None:
    # 20 versions: the slow device's first update comes around version 5 (10 versions take about 10 s alone), and
    # a loaded machine (a CI run beside two benchmarks) once ended 10 versions before it came.
    versions = 2 * VERSIONS
    rows, log = run_uneven_fleet(federation, max_staleness=1, versions=versions)
    assert [r["round"] for r in rows] == list(range(1, versions + 1))
    refused = sum(r["rejected"].get("stale", 0) for r in rows)
    assert refused >= 1, rows
    assert "at most 1 accepted: [aggregation] max_staleness" in log
    assert all(r["aggregation"]["staleness_max"] <= 1 for r in rows)
