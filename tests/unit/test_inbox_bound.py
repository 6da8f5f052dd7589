"""The coordinator's bounded inbox under a burst: several paho-like threads push M real encoded updates through the
node's inbox, the engine's thread decodes, validates and aggregates them; the bound (messages and bytes) holds."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from coordinator.aggregation import FedAvg
from coordinator.aggregation.base import ClientResult
from coordinator.cohort import SamplingRule
from coordinator.drops import DropLog
from coordinator.intake import Intake, UpdateReceived
from coordinator.quorum import QuorumRule
from coordinator.rounds import Rounds
from federation.protocol.chunked_transfer import ChunkedReceiver
from federation.protocol.codec import DecodeLimits, TensorSpec
from federation.protocol.messages import Update
from federation.protocol.topics import RunTopics
from federation.transport.inbox import Inbound, Inbox

TOPICS = RunTopics("fedmq", "burst")
SPECS = [TensorSpec("w", "float32", (64,))]
SENDERS = 6
PER_SENDER = 40       # M = 240 updates; each sender's i-th update goes to a round of its own cohort member id


def encoded(sender: int, i: int) -> Inbound:
    """Update i of thread `sender`: client id s<sender>-<i> (one update per client and round), weights all i."""
    cid = f"s{sender}-{i:03d}"
    message = Update(run="burst", round=1, sender=cid, num_examples=1 + i,
                     tensors=[("w", np.full(64, float(i), np.float32))])
    return Inbound(TOPICS.update(cid), message.encode(), False)


@pytest.mark.parametrize("max_messages, max_bytes", [(4, 1 << 20), (32, 3000), (1, 1)])
def test_a_burst_never_exceeds_the_bound_and_every_update_is_aggregated_once_in_order(
        max_messages: int, max_bytes: int) -> None:
    inbox = Inbox(max_bytes, max_messages)
    ids = {f"s{s}-{i:03d}" for s in range(SENDERS) for i in range(PER_SENDER)}
    rounds = Rounds(QuorumRule(1, 1.0, 60.0), SamplingRule(), "burst")
    for cid in ids:
        rounds.client_online(cid)
    rounds.open(1, 0.0)
    intake = Intake(TOPICS, rounds, DropLog(), ChunkedReceiver(1 << 20, limits=DecodeLimits.for_model(SPECS)),
                    SPECS)
    held: list[tuple[int, int]] = []   # (messages, bytes) seen right after each put

    def paho_thread(sender: int) -> None:
        for i in range(PER_SENDER):
            assert inbox.put(encoded(sender, i), timeout=30), "a full inbox waits; it never gives up within 30 s"
            held.append((len(inbox), inbox.held_bytes))

    threads = [threading.Thread(target=paho_thread, args=(s,)) for s in range(SENDERS)]
    for t in threads:
        t.start()
    fedavg = FedAvg()
    fedavg.begin([np.zeros(64, np.float32)])
    order: dict[str, list[int]] = {f"s{s}": [] for s in range(SENDERS)}
    while sum(map(len, order.values())) < SENDERS * PER_SENDER:
        item = inbox.get(timeout=30)
        assert item is not None, "every update comes out"
        event = intake.decode(item)
        assert isinstance(event, UpdateReceived), intake.drops.rejected
        rounds.accept(event.client_id, 1)
        fedavg.add(ClientResult(event.client_id, event.update.num_examples,
                                [t for _, t in event.update.tensors if isinstance(t, np.ndarray)]))
        sender, index = event.client_id.split("-")
        order[sender].append(int(index))
    for t in threads:
        t.join()
    assert inbox.get(timeout=0.01) is None, "nothing more, nothing twice"
    assert all(indices == list(range(PER_SENDER)) for indices in order.values()), "in order per sender"
    assert fedavg.count == SENDERS * PER_SENDER and rounds.received == SENDERS * PER_SENDER
    one = len(encoded(0, 0).payload)
    assert inbox.peak_messages <= max_messages and max(m for m, _ in held) <= max_messages
    assert inbox.peak_bytes <= max(max_bytes, one + 8), "more than the byte bound only for one lone message"
    # Weighted mean of the values i with weights 1 + i, the same for every sender.
    weights = np.arange(1, PER_SENDER + 1)
    expected = float((weights * np.arange(PER_SENDER)).sum() / weights.sum())
    np.testing.assert_allclose(fedavg.result()[0], np.full(64, expected, np.float32), rtol=1e-6)


def test_the_message_bound_holds_back_small_messages_too() -> None:
    inbox = Inbox(max_bytes=1 << 20, max_messages=2)
    assert inbox.put(Inbound("t", b"a", False), 1) and inbox.put(Inbound("t", b"b", False), 1)
    assert not inbox.put(Inbound("t", b"c", False), timeout=0.05), "two held: the third waits (backpressure)"
    assert inbox.get(1) is not None
    assert inbox.put(Inbound("t", b"c", False), timeout=0.05)
    with pytest.raises(ValueError, match="at least 1 byte"):
        Inbox(max_bytes=0)
