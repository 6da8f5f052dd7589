"""Hostile input with a real Mosquitto, coordinator and clients: a container bomb and a flood can't push honest
updates out or blow up the log, and forged messages on the open profile don't stop or strand a run."""

from __future__ import annotations

import struct
import time

import msgpack
import pytest

from demo.local_federation import LocalFederation
from federation.protocol.messages import ClientStatus, GlobalModel, ModelInfo, RunEnd, TrainingPlan
from federation.protocol.topics import RunTopics
from tests.support import close_probe, connect_probe, wait_for

pytestmark = pytest.mark.timeout(420)
DATA = ["--dataset", "fashion_mnist"]


class Attacker:
    """A raw MQTT connection that publishes whatever it is told to, anywhere (the open profile has no logins)."""

    def __init__(self, port: int, client_id: str = "attacker") -> None:
        self.client = connect_probe(port, client_id, setup=lambda c: c.max_inflight_messages_set(100))

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(60)

    def close(self) -> None:
        close_probe(self.client)


def _envelope(round_: int, sender: str, run: str = "it") -> dict:
    return {"version": 1, "type": "update", "run": run, "round": round_, "sender": sender, "sent_at": 0.0}


def container_bomb(arrays: int) -> bytes:
    """An update map whose extra field holds `arrays` empty msgpack arrays (one byte each)."""
    head = msgpack.packb({**_envelope(1, "mallory"), "num_examples": 10}, use_bin_type=True)
    head = bytes([head[0] + 1]) + head[1:]          # one more map entry: the bomb
    return head + msgpack.packb("x") + b"\xdd" + struct.pack(">I", arrays) + b"\x90" * arrays


def test_bomb_flood_and_bad_ids_cost_little_and_lose_no_honest_update(federation: LocalFederation) -> None:
    """Issue 10: a 16 MB container bomb followed by 20,000 tiny updates for far-away rounds made Mosquitto drop
    both honest updates; a version of 2 million nils made a 12 MB log line; ids outside the protocol's
    characters were taken as online clients; rejections before round 1 were missing from metrics.jsonl."""
    fed = federation
    fed.start_coordinator({"training.rounds": 2, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                           "training.local_epochs": 2, "evaluation.max_examples": 300})
    attacker = Attacker(fed.port)
    topics = RunTopics("fedmq", "it")
    wait_for("the coordinator to subscribe", lambda: "fedmq-coordinator-it connected" in
              fed.procs["coordinator"].log_path.read_text())
    try:
        # Before round 1: garbage, a log bomb, statuses with ids the protocol does not allow.
        attacker.publish(topics.update("mallory"), b"\xc1 not msgpack")
        # 900,000 nils: under the model's size, so it reaches the decoder (a 2 MB one is refused unread).
        attacker.publish(topics.update("mallory"), msgpack.packb({**_envelope(1, "mallory"), "version": [None] * 900_000}))
        for bad in ("bad id", "-dash", "x" * 65):
            status = ClientStatus(run="it", round=0, sender=bad, status="online", num_examples=5)
            attacker.publish(f"fedmq/it/client/{bad}/status", status.encode(), retain=True)
        for k in (1, 2):
            fed.start_client(f"dev-{k}", [*DATA, "--index-range", f"{(k - 1) * 3000}:{k * 3000}"])
        wait_for("round 1 training", lambda: "round 1/2: training" in fed.procs["dev-1"].log_path.read_text())
        # During round 1, while the honest clients train: a bomb, then a flood of far-away rounds.
        # An update for the open round from a client that never published a birth: not in the cohort.
        attacker.publish(topics.update("mallory"), msgpack.packb({**_envelope(1, "mallory"), "num_examples": 5,
                                                                  "tensors": []}))
        attacker.publish(topics.update("mallory"), container_bomb(16_000_000))
        flood = msgpack.packb({**_envelope(999, "mallory"), "num_examples": 1, "tensors": []})
        for _ in range(20_000):
            attacker.client.publish(topics.update("mallory"), flood, qos=1)
        codes = fed.wait_all(360)
    finally:
        attacker.close()
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
    rows = fed.metrics()
    assert [r["client_ids"] for r in rows] == [["dev-1", "dev-2"]] * 2, "no honest update lost"
    first = rows[0]["rejected"]
    assert first.get("malformed", 0) >= 1 and first.get("bad_client_id", 0) == 3, first
    assert first.get("not_in_cohort", 0) == 1, "an update from a client that never announced itself"
    # The 16 MB bomb (over the model's size, before decoding) and the 900,000 nils (over the array length a
    # message of this model needs, while decoding) are both too_large.
    assert first.get("too_large", 0) == 2 and first.get("flood", 0) > 10_000, first
    flooded = sum(r["rejected"].get(k, 0) for r in rows for k in ("flood", "wrong_round"))
    assert flooded == 20_000, "every flood message reached the coordinator and was counted"
    assert "Outgoing messages are being dropped" not in (fed.workdir / "mosquitto" / "mosquitto.log").read_text()
    log = fed.procs["coordinator"].log_path
    text = log.read_text()
    assert log.stat().st_size < 200_000, f"coordinator log of {log.stat().st_size} bytes"
    assert max(len(line) for line in text.splitlines()) < 1000, "...and logged in a short line"
    assert not any(f"client {bad} online" in text for bad in ("bad id", "-dash", "x" * 65))
    assert "mallory" not in " ".join(rows[0]["client_ids"] + rows[1]["client_ids"])


def test_forged_statuses_model_and_run_end_do_not_stop_or_strand_a_run(federation: LocalFederation) -> None:
    """Issue 10, open profile: two retained "offline" statuses stopped the run from starting; a forged global
    model with a wrong input shape made both honest clients exit with code 3; a forged run_end stranded them."""
    fed = federation
    topics = RunTopics("fedmq", "it")
    attacker = Attacker(fed.port)
    try:
        for k in (1, 2):
            fed.start_client(f"dev-{k}", [*DATA, "--index-range", f"{(k - 1) * 3000}:{k * 3000}"])
        wait_for("both births", lambda: all("connected to" in fed.procs[f"dev-{k}"].log_path.read_text()
                                              for k in (1, 2)))
        time.sleep(1)
        for k in (1, 2):   # forged deaths, retained
            attacker.publish(topics.client_status(f"dev-{k}"),
                             ClientStatus(run="it", round=0, sender=f"dev-{k}", status="offline").encode(), retain=True)
        fed.start_coordinator({"training.rounds": 3, "quorum.min_clients": 2, "quorum.round_deadline_s": 300,
                               "training.local_epochs": 2, "evaluation.max_examples": 300,
                               "quorum.wait_for_clients_s": 60})
        wait_for("round 1 training", lambda: "round 1/3: training" in fed.procs["dev-1"].log_path.read_text())
        forged = GlobalModel(run="it", round=7, sender="coordinator", model=ModelInfo("small_cnn", (32, 32, 3), 10),
                             train=TrainingPlan(1, 32, 0.001), tensors=[], total_rounds=9, weights_sha256="0" * 64)
        attacker.publish(topics.global_model, forged.encode(), retain=True)
        attacker.publish(topics.run_end, RunEnd(run="it", round=1, sender="coordinator").encode(), retain=False)
        codes = fed.wait_all(360)
    finally:
        attacker.close()
    assert codes == {"coordinator": 0, "dev-1": 0, "dev-2": 0}, codes
    rows = fed.metrics()
    assert [r["client_ids"] for r in rows] == [["dev-1", "dev-2"]] * 3
    coordinator = fed.procs["coordinator"].log_path.read_text()
    assert "a message on fedmq/it/model/global that this coordinator did not publish" in coordinator
    assert "ignored a run_end while the coordinator is training" in fed.procs["dev-1"].log_path.read_text()
