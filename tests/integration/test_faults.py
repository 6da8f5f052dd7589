"""Fault injection with real processes and a real Mosquitto: a client killed mid-training, the
coordinator killed and restarted, the broker restarted, and a device sending garbage and duplicates."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from typing import Callable

import pytest

from demo.local_federation import LocalFederation
from tests.support import probe_client, wait_for

pytestmark = pytest.mark.timeout(400)

DATA = ["--dataset", "fashion_mnist", "--max-examples", "6000"]


def _log_has(fed: LocalFederation, name: str, text: str) -> Callable[[], bool]:
    return lambda: text in fed.procs[name].log_path.read_text(errors="replace")


def _rounds_done(fed: LocalFederation) -> int:
    path = fed.run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _start_clients(fed: LocalFederation, count: int, extra: list[str] | None = None) -> list[str]:
    names = [f"dev-{k}" for k in range(1, count + 1)]
    for k, name in enumerate(names, start=1):
        fed.start_client(name, [*DATA, "--partition", f"{k}/{count}", *(extra or [])])
    return names


def test_client_killed_mid_training_round_closes_without_it_and_it_rejoins(federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"training.rounds": 4, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                           "training.local_epochs": 2, "evaluation.max_examples": 1000})
    _start_clients(fed, 3)
    wait_for("dev-3 training round 1", _log_has(fed, "dev-3", "round 1/4: training"))
    fed.kill("dev-3")
    fed.start_client("dev-3-again", [*DATA, "--partition", "3/3"])  # back at once: it starts in a few seconds
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0, "dev-3": -9, "dev-3-again": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["client_ids"] == ["dev-1", "dev-2"]
    assert rows[0]["round_time_s"] < 120, "closed when dev-3's last will arrived, not at the 300 s deadline"
    assert rows[-1]["test_accuracy"] > 0.6
    coordinator_log = fed.procs["coordinator"].log_path.read_text()
    assert "client dev-3 offline" in coordinator_log
    # Back online, it is in the cohort of every round that starts after that, and takes part in it.
    back = coordinator_log.index("client dev-3-again online")
    later = [int(m[1]) for m in re.finditer(r"round (\d)/4: model published", coordinator_log) if m.start() > back]
    assert later, "dev-3-again came back before the last round started"
    assert all("dev-3-again" in rows[r - 1]["client_ids"] for r in later), (later, rows)


def test_coordinator_killed_and_restarted_resumes_without_client_restarts(federation: LocalFederation) -> None:
    fed = federation
    overrides = {"training.rounds": 4, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                 "evaluation.max_examples": 1000}
    fed.start_coordinator(overrides)
    _start_clients(fed, 2)
    wait_for("round 2 to start", _log_has(fed, "coordinator", "round 2/4: model published"))
    fed.kill("coordinator")
    assert _rounds_done(fed) == 1
    fed.start_coordinator(overrides, name="coordinator-restarted")
    codes = fed.wait_all(300)
    assert codes == {"coordinator": -9, "dev-1": 0, "dev-2": 0, "coordinator-restarted": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3, 4], "every round exactly once"
    assert all(r["client_ids"] == ["dev-1", "dev-2"] for r in rows), "no update lost, none counted twice"
    assert rows[-1]["test_accuracy"] > 0.6
    restarted_log = fed.procs["coordinator-restarted"].log_path.read_text()
    assert "resuming run 'it' after round 1" in restarted_log


def test_restart_with_other_settings_refuses_to_resume(federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 1, "evaluation.max_examples": 500})
    fed.start_client("dev-1", ["--dataset", "fashion_mnist", "--max-examples", "1000", "--max-rounds", "1"])
    wait_for("round 1 to close", lambda: _rounds_done(fed) >= 1)
    fed.kill("coordinator")
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 1, "evaluation.max_examples": 500,
                           "training.learning_rate": 0.01}, name="coordinator-changed")
    assert fed.wait("coordinator-changed", 120) != 0
    text = fed.procs["coordinator-changed"].log_path.read_text()
    assert "Refusing to resume" in text and "--run.on_existing new" in text


def test_broker_restart_mid_round_run_completes(federation: LocalFederation) -> None:
    fed = federation
    assert fed.broker is not None
    fed.start_coordinator({"training.rounds": 3, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                           "training.local_epochs": 2, "evaluation.max_examples": 1000})
    _start_clients(fed, 2)
    wait_for("round 2 training", _log_has(fed, "dev-1", "round 2/3: training"))
    fed.broker.stop()
    time.sleep(3)
    fed.broker.start()
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["client_ids"] == ["dev-1", "dev-2"] for r in rows)
    for name in ("coordinator", "dev-1", "dev-2"):
        assert "reconnecting" in fed.procs[name].log_path.read_text(), f"{name} saw the broker go"


def test_garbage_and_duplicates_are_rejected_and_counted(federation: LocalFederation) -> None:
    fed = federation
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 3, "quorum.round_deadline_s": 300,
                           "broker.max_payload_mb": 2.0, "evaluation.max_examples": 1000})
    _start_clients(fed, 2)
    fed.spawn("hostile", [sys.executable, "-m", "tests.integration.hostile_client", "--port", str(fed.port),
                          "--run", fed.run_name])
    codes = fed.wait_all(300)
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0, "hostile": 0}, codes
    rows = fed.metrics()
    assert [r["round"] for r in rows] == [1, 2]
    expected = {"malformed": 2, "version": 1, "bad_tensors": 2, "not_finite": 1, "bad_num_examples": 2,
                "sender_mismatch": 1, "wrong_run": 1, "wrong_round": 1, "too_large": 1}
    for row in rows:
        assert row["client_ids"] == ["dev-1", "dev-2", "hostile"], "each client counted once"
        assert row["rejected"] == expected, row["rejected"]
        assert row["ignored"] == {"duplicate": 1}, "a repeated update is not an error"
    assert rows[-1]["test_accuracy"] > 0.6
    log_text = fed.procs["coordinator"].log_path.read_text()
    assert "rejected a message from hostile (not_finite)" in log_text
    logged = Counter(line.split("(")[1].split(")")[0] for line in log_text.splitlines()
                     if "rejected a message from hostile" in line)
    assert set(logged) == set(expected), "the first drop of each reason is logged in full"
    assert sum(logged.values()) <= 2 * len(expected), "repeats are summed up, not logged one by one"


def test_chunked_transfer_through_a_broker_that_caps_message_size(tmp_path) -> None:
    """Mosquitto refuses messages over 300 kB; the 0.9 MB model and updates travel as sha256-checked chunks."""
    limit = 300_000
    with LocalFederation(tmp_path / "fed", run_name="it", broker_config=[f"message_size_limit {limit}"]) as fed:
        fed.start_broker()
        assert _oversize_is_dropped(fed.port, limit), "the broker must really drop messages over the limit"
        fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                               "broker.chunk_bytes": 250_000, "evaluation.max_examples": 1000})
        _start_clients(fed, 2, ["--chunk-bytes", "250000"])
        codes = fed.wait_all(300)
        assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
        rows = fed.metrics()
        assert [r["round"] for r in rows] == [1, 2]
        assert all(r["client_ids"] == ["dev-1", "dev-2"] and r["rejected"] == {} for r in rows)
        assert rows[-1]["bytes_in"] > 2 * 900_000, "whole updates were reassembled"
        assert rows[-1]["test_accuracy"] > 0.6


def _oversize_is_dropped(port: int, limit: int) -> bool:
    """Publish one message over `limit` and one under it; True if only the small one arrives."""
    import threading

    import paho.mqtt.client as mqtt

    got: list[int] = []
    ready, small = threading.Event(), threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(len(msg.payload))
        if len(msg.payload) < limit:
            small.set()

    def setup(sub: mqtt.Client) -> None:
        sub.on_connect = lambda c, *_: c.subscribe("probe/#", qos=1)
        sub.on_subscribe = lambda *_: ready.set()
        sub.on_message = on_message

    with probe_client(port, "probe-sub", setup=setup), probe_client(port, "probe-pub") as pub:
        assert ready.wait(10)
        pub.publish("probe/big", b"x" * (limit + 1000), qos=1)
        time.sleep(0.5)
        pub.publish("probe/small", b"y" * 100, qos=1)
        assert small.wait(10)
        time.sleep(0.5)
    return got == [100]
