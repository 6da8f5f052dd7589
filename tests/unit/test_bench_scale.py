"""Tests for the read-outs of the issue-15 scale benchmark (bench/scale_readouts.py): rows, overheads, memory from
/proc, births and updates counted by both sides and what was lost, and the fedmq/Flower ratio."""

from __future__ import annotations

import pytest

from bench import scale_readouts as readouts
from bench.scale_readouts import Counts, MemoryTrace, Row, Span


def test_rows_sample_the_named_fleet_and_add_the_online_cohort_rows() -> None:
    rows = readouts.parse_rows([10, 100, 5000], readouts.parse_sampling(["5000:0.1"]), ["5000:1000"])
    assert rows == [Row(10, 10), Row(100, 100), Row(5000, 500), Row(5000, 1000)]
    assert rows[0].label == "10 (all training)" and rows[2].label == "5,000 (500 training)"
    for bad in (["5000"], ["a:b"], ["10:20"], ["10:0"]):
        with pytest.raises(ValueError, match="ONLINE:COHORT"):
            readouts.parse_rows([10], {}, bad)
    with pytest.raises(ValueError, match="N:FRACTION"):
        readouts.parse_sampling(["5000"])
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        readouts.parse_sampling(["5000:1.5"])
    with pytest.raises(ValueError, match="positive"):
        readouts.parse_rows([0], {}, [])


def test_overhead_is_round_time_minus_the_training_time() -> None:
    metrics = [{"round_time_s": 2.5, "overhead_s": 0.6}, {"round_time_s": 8.8, "overhead_s": 6.9},
               {"round_time_s": 1.0, "overhead_s": 0.0}]
    assert readouts.overheads(metrics, 2.0) == pytest.approx([0.5, 6.8, 0.0]), "never negative"
    assert readouts.reported_overheads(metrics) == [0.6, 6.9, 0.0]
    assert Span.of(readouts.overheads(metrics, 2.0)).text(" s") == "0.00 to 6.80 s"
    assert Span.of([0.444, 0.441]).text() == "0.44"
    assert Span.of([]).text() == "n/a"


def test_memory_is_read_from_proc_status_in_bytes() -> None:
    status = "Name:\tmosquitto\nVmPeak:\t  99999 kB\nVmHWM:\t   14960 kB\nVmRSS:\t   12000 kB\nThreads:\t1\n"
    assert readouts.parse_proc_status(status) == (12000 * 1024, 14960 * 1024)
    assert readouts.parse_proc_status("Name:\tzombie\n") == (0, 0)


def test_memory_trace_keeps_the_rss_at_round_1_and_the_high_water_mark() -> None:
    trace = MemoryTrace()
    assert trace.text() == "n/a"
    trace.add(500_000_000, 510_000_000, round_1_started=False)
    trace.add(595_000_000, 600_000_000, round_1_started=True)
    trace.add(700_000_000, 723_000_000, round_1_started=True)
    trace.add(0, 0, round_1_started=True)            # the process is gone: ignored
    assert (trace.at_round_1, trace.peak, trace.samples) == (595_000_000, 723_000_000, 3)
    assert trace.text() == "595 to 723 MB"


def _metrics(*rows: tuple[int, int, dict[str, int], dict[str, int]]) -> list[dict[str, object]]:
    return [{"round": r, "clients": c, "ignored": ignored, "rejected": rejected} for r, c, ignored, rejected in rows]


def test_nothing_lost_when_the_coordinator_took_every_acknowledged_update() -> None:
    simulator = {"births_confirmed": 100, "updates_acknowledged": {"1": 100, "2": 100},
                 "resends_published": {"2": 3}, "reconnects": 3}
    metrics = _metrics((1, 100, {}, {}), (2, 100, {"duplicate": 3}, {}))
    counts = readouts.counts_from(100, simulator, metrics, births_seen=100)
    assert counts.updates_lost() == {1: 0, 2: 0} and counts.lost == 0
    assert counts.resends == 3 and counts.reconnects == 3
    assert counts.text() == "births 100/100, updates 200/200, re-sends 3, lost 0"


def test_missing_births_and_updates_are_counted_as_lost() -> None:
    """The issue's 1,500-device run: the coordinator saw 1,020 births; and updates the broker dropped silently."""
    simulator = {"counts": {"births_confirmed": 1500, "updates_acknowledged": {"1": 1500, "2": 1500}}}
    metrics = _metrics((1, 1400, {"late": 20}, {"not_in_cohort": 5}), (2, 1500, {}, {}))
    counts = readouts.counts_from(1500, simulator, metrics, births_seen=1020)
    assert counts.births_lost == 480
    assert counts.updates_lost() == {1: 75, 2: 0}
    assert counts.lost == 555
    never = readouts.counts_from(10, {"updates_acknowledged": {"1": 10}}, [], births_seen=0)
    assert never.updates_lost() == {1: 10} and never.births_lost == 10, "no round closed: all of them lost"


def test_the_coordinators_birth_count_comes_from_its_state_message() -> None:
    assert readouts.online_count({"online_clients": ["sim-0001", "sim-0002"]}) == 2
    assert readouts.online_count({"online_clients": ["a"], "online_count": 5000}) == 5000
    assert readouts.online_count({}) == 0


def test_ratio_median_and_load_text() -> None:
    assert readouts.ratio(2.0, 8.0) == "0.25x"
    assert readouts.ratio(None, 8.0) == "n/a" and readouts.ratio(1.0, 0.0) == "n/a"
    assert readouts.median([3.0, 1.0, 2.0]) == 2.0 and readouts.median([1.0, 4.0]) == 2.5
    assert readouts.median([]) is None
    assert readouts.load_text("1.52 1.20 0.98 3/250 12345") == "1.52 1.20 0.98"
    assert readouts.load_text("") == "?"


def test_counts_are_plain_data() -> None:
    counts = Counts(devices=3, births_seen=3, sent={1: 3}, accepted={1: 3})
    assert counts.lost == 0 and counts.births_lost == 0


def test_the_coordinator_waits_for_the_fleet_and_samples_the_cohort() -> None:
    from bench import scale

    args = scale.parse_args(["--devices", "5000", "--sample", "5000:0.1", "--online-cohort", "5000:1000",
                             "--rounds", "3"])
    assert [(r.devices, r.cohort) for r in args.rows] == [(5000, 500), (5000, 1000)]
    overrides = scale.fedmq_overrides(args.rows[0], args)
    assert overrides["sampling.min_available_clients"] == "5000", "round 1 only once every birth was seen"
    assert overrides["sampling.fraction_train"] == "0.1" and overrides["quorum.min_clients"] == "500"
    assert overrides["training.rounds"] == "3" and overrides["export.tflite"] == []
    command = scale.simulator_command(args.rows[0], 1883, "run-x", scale.Path("s.json"), args)
    assert command[command.index("--clients") + 1] == "5000" and command[command.index("--processes") + 1] == "20"
    assert command[command.index("--run") + 1] == "run-x"
    quick = scale.parse_args(["--quick"])
    assert [(r.devices, r.cohort) for r in quick.rows] == [(10, 10), (50, 50)] and quick.rounds == 2 and quick.fanout == [10, 50]
    assert scale.parse_args(["--devices", "10", "100", "5000"]).fanout == [10, 100]
