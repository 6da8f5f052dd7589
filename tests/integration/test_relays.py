"""Site relays (issue 16): real Mosquitto brokers (a central one, one per site), the real coordinator, relays
(`python -m coordinator relay`) and devices written from PROTOCOL.md alone (tests/integration/protocol_client.py),
whose updates are deterministic: the global weights times a factor, so that a flat run and a relayed run can be
compared weight for weight."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from broker.mosquitto_process import MosquittoProcess
from coordinator.checkpoint import load_checkpoint
from demo.local_federation import LocalFederation
from tests.support import wait_for

pytestmark = pytest.mark.timeout(600)

# Devices: (id, num_examples, factor). Different weights and factors: FedAvg's weighting shows in the result.
DEVICES = {"d1": (100, 0.999), "a1": (300, 0.99), "a2": (50, 1.01), "b1": (200, 0.995)}
FAST_RUN = {"training.rounds": 2, "evaluation.max_examples": 200, "quorum.start_grace_s": 2,
            "deploy.enabled": False, "export.tflite": ["float32"]}


def _device(fed: LocalFederation, client_id: str, port: int, delay_s: float = 0.0) -> None:
    examples, factor = DEVICES[client_id]
    fed.spawn(client_id, [sys.executable, "-m", "tests.integration.protocol_client", "--port", str(port), "--run",
                          fed.run_name, "--client-id", client_id, "--num-examples", str(examples), "--factor",
                          str(factor), "--delay-s", str(delay_s)])


def _relay(fed: LocalFederation, site: str, site_port: int, name: str | None = None, send_after_s: float = 60) -> None:
    fed.spawn(name or f"relay-{site}", [sys.executable, "-m", "coordinator", "relay", "--site", site, "--upstream",
                                        f"127.0.0.1:{fed.port}", "--local", f"127.0.0.1:{site_port}", "--run",
                                        fed.run_name, "--send-after-s", str(send_after_s)])


def _final_weights(fed: LocalFederation) -> list[np.ndarray]:
    checkpoint = load_checkpoint(fed.run_dir)
    assert checkpoint is not None and checkpoint.finished
    return checkpoint.weights


def _relative_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.linalg.norm(x.astype(np.float64) - y) / max(np.linalg.norm(y.astype(np.float64)), 1e-30))
               for x, y in zip(a, b))


def test_relayed_fedavg_equals_flat_fedavg_with_two_sites_and_a_direct_device(tmp_path: Path) -> None:
    """The same four devices, flat (all on the central broker) and relayed (d1 direct, a1 and a2 behind site A's
    relay, b1 behind site B's): the same final weights within 1e-6 relative, every device counted each round."""
    with LocalFederation(tmp_path / "flat", run_name="relayeq") as flat:
        flat.start_broker()
        flat.start_coordinator({**FAST_RUN, "quorum.min_clients": 4})
        for device in DEVICES:
            _device(flat, device, flat.port)
        assert set(flat.wait_all(300).values()) == {0}
        flat_rows, flat_weights = flat.metrics(), _final_weights(flat)

    with LocalFederation(tmp_path / "relayed", run_name="relayeq") as fed, \
            MosquittoProcess(workdir=tmp_path / "site-a") as site_a, \
            MosquittoProcess(workdir=tmp_path / "site-b") as site_b:
        fed.start_broker()
        fed.start_coordinator({**FAST_RUN, "quorum.min_clients": 4})
        _relay(fed, "site-a", site_a.port)
        _relay(fed, "site-b", site_b.port)
        _device(fed, "d1", fed.port)
        _device(fed, "a1", site_a.port)
        _device(fed, "a2", site_a.port)
        _device(fed, "b1", site_b.port)
        codes = fed.wait_all(300)
        assert set(codes.values()) == {0}, codes
        rows, weights = fed.metrics(), _final_weights(fed)
        relay_log = fed.procs["relay-site-a"].log_path.read_text()

    assert [r["client_ids"] for r in rows] == [r["client_ids"] for r in flat_rows] == [sorted(DEVICES)] * 2
    assert [r["clients"] for r in rows] == [4, 4] and [r["cohort"] for r in rows] == [4, 4]
    assert [r["examples"] for r in rows] == [650, 650]
    assert all(not r["rejected"] and not r.get("ignored") for r in rows), rows
    assert "partial 0 sent: 2 devices, 350 examples" in relay_log
    # Two sites' partials of one float32 mean each: 4 updates' worth of WAN uplink became 1 + 2.
    assert all(r["bytes_in"] < 4 * 900_000 for r in rows)
    difference = _relative_difference(weights, flat_weights)
    assert difference <= 1e-6, difference


def test_a_relay_killed_mid_round_loses_its_sites_work_counted_and_the_run_completes(tmp_path: Path) -> None:
    """Site A's relay is SIGKILLed after it accepted a1's update and while a2 still trains: the relay's will marks
    both offline centrally, round 1 closes with d1 alone and counts a1 and a2 as lost_with_relay; a restarted relay
    brings them back (its status lists them again), and round 2 has all three."""
    with LocalFederation(tmp_path / "fed", run_name="relaykill") as fed, \
            MosquittoProcess(workdir=tmp_path / "site-a") as site_a:
        fed.start_broker()
        fed.start_coordinator({**FAST_RUN, "quorum.min_clients": 1, "sampling.min_available_clients": 3})
        _relay(fed, "site-a", site_a.port)
        _device(fed, "d1", fed.port)
        _device(fed, "a1", site_a.port)
        _device(fed, "a2", site_a.port, delay_s=10)
        relay_log = fed.procs["relay-site-a"].log_path
        wait_for("the relay to accept a1's update of round 1",
                 lambda: "round 1: update of a1" in relay_log.read_text(), 180, log=relay_log)
        fed.kill("relay-site-a")
        metrics = fed.run_dir / "metrics.jsonl"
        wait_for("round 1 to close", lambda: metrics.is_file() and metrics.read_text().strip(), 120,
                 log=fed.procs["coordinator"].log_path)
        time.sleep(1)
        _relay(fed, "site-a", site_a.port, name="relay-site-a-again")
        codes = fed.wait_all(300)
        rows = fed.metrics()
    assert codes.pop("relay-site-a") != 0   # killed
    assert set(codes.values()) == {0}, codes
    assert rows[0]["client_ids"] == ["d1"], rows[0]
    assert rows[0]["ignored"] == {"lost_with_relay": 2}, rows[0]
    assert rows[1]["client_ids"] == ["a1", "a2", "d1"], rows[1]
    # The restarted relay finds round 1's model still retained (round 2 waits for three devices) and forwards it:
    # a1 re-sends its round-1 update and a2 sends its own 10 s into round 1. Both reach the centre after round 1
    # closed: counted late (or duplicate at the relay), never aggregated.
    assert set(rows[1].get("ignored", {})) <= {"late", "duplicate"}, rows[1]
    assert not rows[0]["rejected"] and not rows[1]["rejected"], rows



def test_a_relay_restarted_within_the_round_resumes_and_nothing_is_lost(tmp_path: Path) -> None:
    """Site A's relay is killed after it accepted a1's update, before forwarding it (a2 still trains), and restarted
    at once: it re-publishes the same model on the site broker, a1 re-sends (PROTOCOL.md "Restarts"), a2 sends
    when done, and each round counts all three devices, none lost."""
    with LocalFederation(tmp_path / "fed", run_name="relayback") as fed, \
            MosquittoProcess(workdir=tmp_path / "site-a") as site_a:
        fed.start_broker()
        fed.start_coordinator({**FAST_RUN, "quorum.min_clients": 3})
        _relay(fed, "site-a", site_a.port)
        _device(fed, "d1", fed.port)
        _device(fed, "a1", site_a.port)
        _device(fed, "a2", site_a.port, delay_s=10)
        relay_log = fed.procs["relay-site-a"].log_path
        wait_for("the relay to accept a1's update of round 1",
                 lambda: "round 1: update of a1" in relay_log.read_text(), 180, log=relay_log)
        fed.kill("relay-site-a")
        _relay(fed, "site-a", site_a.port, name="relay-site-a-again")
        codes = fed.wait_all(300)
        rows = fed.metrics()
        again = fed.procs["relay-site-a-again"].log_path.read_text()
        a1_log = fed.procs["a1"].log_path.read_text()
    assert "relay: round 1: partial 0 sent" not in relay_log.read_text()   # killed before forwarding
    assert codes.pop("relay-site-a") != 0
    assert set(codes.values()) == {0}, codes
    assert "round 1: the same model again; update re-sent" in a1_log
    assert "round 1: update of a1" in again
    assert [r["client_ids"] for r in rows] == [["a1", "a2", "d1"]] * 2, rows
    assert all(not r["rejected"] for r in rows), rows
    # a2 may see the re-published model after sending: its re-send is a duplicate at the relay, counted centrally.
    assert all(set(r.get("ignored", {})) <= {"duplicate"} for r in rows), rows


def test_updates_after_the_relays_deadline_follow_in_a_second_partial_of_the_same_round(tmp_path: Path) -> None:
    """--send-after-s 3 and a2 takes 10 s: the relay sends a1 at its deadline (part 0) and a2 when it comes (part
    1); the coordinator takes both partials of the round and counts all three devices once."""
    with LocalFederation(tmp_path / "fed", run_name="relayparts") as fed, \
            MosquittoProcess(workdir=tmp_path / "site-a") as site_a:
        fed.start_broker()
        fed.start_coordinator({**FAST_RUN, "training.rounds": 1, "quorum.min_clients": 3})
        _relay(fed, "site-a", site_a.port, send_after_s=3)
        _device(fed, "d1", fed.port)
        _device(fed, "a1", site_a.port)
        _device(fed, "a2", site_a.port, delay_s=10)
        codes = fed.wait_all(300)
        rows = fed.metrics()
        relay_log = fed.procs["relay-site-a"].log_path.read_text()
    assert set(codes.values()) == {0}, codes
    assert "round 1: partial 0 sent: 1 devices, 300 examples" in relay_log
    assert "round 1: partial 1 sent: 1 devices, 50 examples" in relay_log
    assert rows[0]["client_ids"] == ["a1", "a2", "d1"] and rows[0]["examples"] == 450, rows
    assert not rows[0]["rejected"] and not rows[0].get("ignored"), rows
