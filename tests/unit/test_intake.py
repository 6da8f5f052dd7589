"""The coordinator's intake (coordinator.intake) without a broker: inbox messages in, typed events out, every drop
counted with its reason; the round state machine answers the envelope checks."""

from __future__ import annotations

import numpy as np

from coordinator.cohort import SamplingRule
from coordinator.drops import DropLog
from coordinator.intake import ClientCleared, ClientOffline, ClientOnline, Intake, UpdateReceived
from coordinator.quorum import QuorumRule
from coordinator.rounds import Rounds
from federation.protocol.chunked_transfer import ChunkedReceiver
from federation.protocol.codec import DecodeLimits, TensorSpec
from federation.transport.inbox import Inbound
from federation.protocol.messages import ClientStatus, Update
from federation.protocol.topics import RunTopics

TOPICS = RunTopics("fedmq", "r1")
SPECS = [TensorSpec("w", "float32", (3,))]


def intake() -> tuple[Intake, Rounds, DropLog]:
    rounds = Rounds(QuorumRule(1, 1.0, 60.0), SamplingRule(), "r1")
    drops = DropLog()
    receiver = ChunkedReceiver(1 << 20, limits=DecodeLimits.for_model(SPECS))
    return Intake(TOPICS, rounds, drops, receiver, SPECS), rounds, drops


def status(sender: str, **fields: object) -> Inbound:
    message = ClientStatus(**{"run": "r1", "round": 0, "sender": sender, **fields})  # type: ignore[arg-type]
    return Inbound(TOPICS.client_status(sender), message.encode(), True)


def update(sender: str, round_: int = 1, weights: np.ndarray | None = None, **fields: object) -> Inbound:
    w = np.ones(3, np.float32) if weights is None else weights
    message = Update(**{"run": "r1", "round": round_, "sender": sender, "num_examples": 10,  # type: ignore[arg-type]
                        "metrics": {"train_time_s": 1.5}, "tensors": [("w", w)], **fields})
    return Inbound(TOPICS.update(sender), message.encode(), False)


def test_statuses_become_client_events() -> None:
    take, _, drops = intake()
    online = take.decode(status("a", num_examples=5))
    assert isinstance(online, ClientOnline) and online.client_id == "a" and online.status.num_examples == 5
    assert take.decode(status("a", status="offline", error="bye")) == ClientOffline("a", "bye")
    assert take.decode(status("a", run="other")) == ClientOffline("a", ""), "online for another run"
    assert take.decode(Inbound(TOPICS.client_status("a"), b"", True)) == ClientCleared("a")
    assert take.decode(status("cam", role="serve")) is None, "an inference-only device takes no part"
    assert take.decode(Inbound(TOPICS.client_status("a"), status("b").payload, True)) is None
    assert drops.rejected == {"sender_mismatch": 1}


def test_an_update_of_the_open_round_from_a_cohort_member_is_decoded_and_validated() -> None:
    take, rounds, drops = intake()
    rounds.client_online("a")
    rounds.client_online("b")
    rounds.open(1, 0.0)
    event = take.decode(update("a"))
    assert isinstance(event, UpdateReceived) and event.client_id == "a" and event.size == len(update("a").payload)
    assert event.update.num_examples == 10 and event.update.tensors[0][1].tolist() == [1.0, 1.0, 1.0]
    rounds.accept("a")
    assert take.decode(update("a")) is None, "a second update"
    assert take.decode(update("b", weights=np.ones(4, np.float32))) is None, "not the model's shape"
    assert take.decode(update("b", weights=np.array([1.0, np.nan, 0.0], np.float32))) is None
    assert take.decode(update("b", round_=2)) is None
    assert take.decode(Inbound(TOPICS.update("b"), status("b", round=1).payload, False)) is None
    assert drops.ignored == {"duplicate": 1}
    assert drops.rejected == {"too_large": 1, "not_finite": 1, "wrong_round": 1, "wrong_type": 1}


def test_late_and_not_in_cohort_updates_are_dropped_with_their_reason() -> None:
    take, rounds, drops = intake()
    rounds.client_online("a")
    rounds.open(1, 0.0)
    assert take.decode(update("late-joiner")) is None
    assert drops.rejected == {"not_in_cohort": 1}
    rounds.accept("a")
    rounds.close(1.0)
    assert take.decode(update("a")) is None
    assert drops.ignored == {"late": 1}


def test_a_client_id_outside_the_protocol_is_dropped() -> None:
    take, _, drops = intake()
    assert take.decode(Inbound("fedmq/r1/update/.x", b"x", False)) is None
    assert drops.rejected == {"bad_client_id": 1}
    assert take.decode(Inbound("elsewhere/topic", b"x", False)) is None


def test_an_update_in_another_encoding_than_the_runs_is_refused_as_wrong_encoding() -> None:
    from federation.protocol.encodings import EncodingPlan, encode_int8, encode_topk

    rounds = Rounds(QuorumRule(1, 1.0, 60.0), SamplingRule(), "r1")
    drops = DropLog()
    take = Intake(TOPICS, rounds, drops, ChunkedReceiver(1 << 20, limits=DecodeLimits.for_model(SPECS)), SPECS,
                  encoding=EncodingPlan("int8", int8_block=3))
    take.version_sha256[1] = "ab" * 32
    for client in ("a", "b", "c", "d", "e"):
        rounds.client_online(client)
    rounds.open(1, 0.0)
    delta = np.array([0.5, -0.25, 0.0], np.float32)
    event = take.decode(update("a", tensors=[("w", encode_int8(delta, 3))], base_sha256="ab" * 32))
    assert isinstance(event, UpdateReceived) and event.update.base_sha256 == "ab" * 32
    assert take.decode(update("b")) is None, "whole float32 weights"
    assert take.decode(update("c", tensors=[("w", encode_topk(delta, 0.5))], base_sha256="ab" * 32)) is None
    assert take.decode(update("d", tensors=[("w", encode_int8(delta, 3))], base_sha256="cd" * 32)) is None
    assert drops.rejected == {"wrong_encoding": 3}
