"""Tests for the read-outs of the issue-13 benchmarks (bench/fleet_setup.py, uneven_devices.py, non_iid.py): time to
accuracy, speed-up ratios, the FedBuff settings parsed, the fleets' command lines and the targets' checks."""

from __future__ import annotations

import argparse

import pytest

from bench import fleet_setup, non_iid, uneven_devices


def _rows(*points: tuple[int, float, float]) -> list[dict[str, float]]:
    return [{"round": r, "test_accuracy": a, "elapsed_s": t} for r, a, t in points]


def test_time_to_accuracy_is_the_first_row_at_or_above_the_target() -> None:
    rows = _rows((1, 0.80, 10.0), (2, 0.85, 21.5), (3, 0.84, 30.0), (4, 0.90, 41.0))
    assert fleet_setup.time_to_accuracy(rows, 0.85) == 21.5
    assert fleet_setup.time_to_accuracy(rows, 0.86) == 41.0
    assert fleet_setup.time_to_accuracy(rows, 0.95) is None
    assert fleet_setup.accuracy_at_round(rows, 3) == 0.84
    assert fleet_setup.accuracy_at_round(rows, 5) is None


def test_speedups_are_sync_time_over_each_modes_time_per_repeat() -> None:
    rows = [{"mode": "sync FedAvg", "repeat": 1, "time_to_target_s": 300.0},
            {"mode": "async K=5 S=20", "repeat": 1, "time_to_target_s": 100.0},
            {"mode": "sync FedAvg", "repeat": 2, "time_to_target_s": 360.0},
            {"mode": "async K=5 S=20", "repeat": 2, "time_to_target_s": 90.0},
            {"mode": "deadline", "repeat": 1, "time_to_target_s": None},
            {"mode": "deadline", "repeat": 2, "time_to_target_s": 120.0}]
    result = uneven_devices.speedups(rows, ["sync FedAvg", "async K=5 S=20", "deadline"])
    assert result["async K=5 S=20"]["ratios"] == [3.0, 4.0]
    assert result["async K=5 S=20"]["median_ratio"] == 3.5
    assert result["async K=5 S=20"]["median_s"] == 95.0
    assert result["sync FedAvg"]["median_ratio"] == 1.0
    assert result["deadline"]["ratios"] == [None, 3.0]
    assert result["deadline"]["median_s"] is None, "a repeat that never reached the target has no median time"


def test_async_settings_parse_and_name_their_runs() -> None:
    settings = uneven_devices.parse_async_settings("5:20,8:10")
    assert [(s.buffer_size, s.max_staleness) for s in settings] == [(5, 20), (8, 10)]
    assert uneven_devices.run_slug(settings[0].label) == "async-K5-S20"
    assert uneven_devices.run_slug("sync FedAvg") == "sync"
    assert uneven_devices.run_slug("sync deadline 120 s, quorum 8") == "deadline"
    for bad in ("5", "a:b", "0:3", "5:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="bad async setting"):
            uneven_devices.parse_async_settings(bad)


def test_the_uneven_fleet_slows_down_the_last_devices_and_every_mode_waits_for_all() -> None:
    args = uneven_devices.parse_args(["--clients", "4", "--slow-clients", "1", "--async", "3:7"])
    clients = uneven_devices.fleet(args, ["--dataset", "fashion_mnist"])
    assert [c[c.index("--client-id") + 1] for c in clients] == ["fast-1", "fast-2", "fast-3", "slow-4"]
    assert "--slowdown" in clients[3] and "--slowdown" not in clients[0]
    assert clients[1][clients[1].index("--partition") + 1] == "2/4"
    plan = dict(uneven_devices.mode_plan(args))
    assert plan["sync FedAvg"]["quorum.min_clients"] == "4"
    assert plan["async K=3 S=7"]["aggregation.mode"] == "async"
    assert plan["async K=3 S=7"]["aggregation.buffer_size"] == "3"
    deadline = next(o for label, o in plan.items() if label.startswith("sync deadline"))
    assert (deadline["quorum.min_clients"], deadline["quorum.fraction"]) == ("3", "0.8")
    assert all(o["sampling.min_available_clients"] == "4" for o in plan.values())


def test_lognormal_speeds_spread_from_1_to_the_slowdown_and_name_the_slow_half() -> None:
    args = uneven_devices.parse_args(["--speeds", "lognormal", "--slowdown", "10"])
    slowdowns = uneven_devices.device_slowdowns(args)
    assert len(slowdowns) == 10 and slowdowns == sorted(slowdowns)
    assert slowdowns[0] == pytest.approx(1.0) and slowdowns[-1] == pytest.approx(10.0)
    # log-normal: the logarithms are symmetric about the middle, so the geometric middle is sqrt(10)
    assert slowdowns[4] * slowdowns[5] == pytest.approx(10.0)
    assert slowdowns[1] / slowdowns[0] > slowdowns[5] / slowdowns[4]   # quantiles spread out at the tails
    clients = uneven_devices.fleet(args, [])
    ids = [c[c.index("--client-id") + 1] for c in clients]
    assert ids[:7] == [f"fast-{k}" for k in range(1, 8)] and ids[7:] == ["slow-8", "slow-9", "slow-10"]
    assert "--slowdown" not in clients[0] and clients[-1][clients[-1].index("--slowdown") + 1] == "10"
    assert uneven_devices.lognormal_slowdowns(1, 10) == [1.0]
    with pytest.raises(SystemExit):
        uneven_devices.parse_args(["--slowdown", "0.5"])


def test_dirichlet_partition_arguments() -> None:
    assert fleet_setup.partition_args(2, 10, "dirichlet", 0.1, 7, 5000) == [
        "--partition", "3/10", "--scheme", "dirichlet", "--seed", "7", "--alpha", "0.1", "--max-examples", "5000"]
    assert "--alpha" not in fleet_setup.partition_args(0, 2)


def test_tuning_a_method_changes_only_its_parameter() -> None:
    fedavgm = non_iid.METHODS["fedavgm"].with_value("0.5")
    assert fedavgm.overrides["server_optimizer.server_momentum"] == "0.5"
    assert fedavgm.overrides["server_optimizer.server_learning_rate"] == "1.0"
    fedadam = non_iid.METHODS["fedadam"].with_value("0.01")
    assert fedadam.overrides["server_optimizer.eta"] == "0.01"
    assert fedadam.overrides["server_optimizer.name"] == "fedadam"
    assert non_iid.METHODS["fedavg"].with_value("1") is non_iid.METHODS["fedavg"]


def test_values_chosen_by_an_earlier_tuning_run_are_used_and_checked() -> None:
    args = non_iid.parse_args(["--values", "fedprox=0.01, fedavgm=0.5"])
    methods = non_iid.chosen_methods(args)
    assert methods["fedprox"].overrides["training.proximal_mu"] == "0.01"
    assert methods["fedavgm"].overrides["server_optimizer.server_learning_rate"] == "1.0"
    assert methods["fedadam"] is non_iid.METHODS["fedadam"], "no value given: the default"
    for bad in ("fedprox=abc", "fedfoo=0.1", "fedprox", "fedavg=1"):
        with pytest.raises(SystemExit):
            non_iid.parse_args(["--values", bad])


def test_the_alpha_01_check_compares_the_best_new_method_with_fedavg() -> None:
    args = non_iid.parse_args(["--dataset", "mnist", "--rounds", "20"])

    def row(method: str, alpha: float, acc: float, scheme: str = "dirichlet", clients: int = 10) -> dict:
        return {"dataset": "mnist", "scheme": scheme, "alpha": alpha, "clients": clients, "method": method,
                "accuracy": {"20": acc}}

    rows = [row("FedAvg", 0.1, 0.90), row("FedProx", 0.1, 0.915), row("FedAdam", 0.1, 0.93),
            row("FedAvg", 0.5, 0.979), row("FedYogi", 0.5, 0.981), row("FedAvg", 0.0, 0.989, "iid", 2)]
    checks = dict(non_iid.target_checks(args, rows))
    (margin_text, margin_ok), = [(t, ok) for t, ok in checks.items() if "Dirichlet 0.1" in t]
    assert margin_ok and "FedAdam" in margin_text and "+3.00 points" in margin_text
    (alpha05_ok,) = [ok for t, ok in checks.items() if "Dirichlet 0.5" in t]
    assert alpha05_ok, "the best method at alpha 0.5 counts (FedYogi 98.1%)"
    (iid_ok,) = [ok for t, ok in checks.items() if "IID" in t]
    assert not iid_ok, "98.9% misses the 99% target"
    rows[2]["accuracy"]["20"] = 0.91
    assert not [ok for t, ok in non_iid.target_checks(args, rows) if "Dirichlet 0.1" in t][0]
