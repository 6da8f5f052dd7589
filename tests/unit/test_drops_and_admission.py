"""Drop accounting and the cheap checks before decoding: counts by reason, bounded logging, per-device budgets,
and the bounded inbox."""

from __future__ import annotations

import logging
import threading

import pytest

from coordinator.admission import Admission
from coordinator.drops import DropLog
from federation.transport.inbox import Inbound, Inbox


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_errors_and_honest_leftovers_are_counted_apart() -> None:
    drops = DropLog()
    drops.record("dev-1", "malformed", "x")
    drops.record("dev-1", "late", "update for round 1, which has closed")
    drops.record("dev-2", "duplicate", "second update")
    drops.record("dev-2", "flood", "over budget", count=500)
    rejected, ignored = drops.take()
    assert rejected == {"malformed": 1, "flood": 500}
    assert ignored == {"late": 1, "duplicate": 1}
    assert drops.take() == ({}, {}), "take() starts the next round's counts"


def test_a_flood_of_any_size_costs_a_few_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10: the full corpus made a 50 MB log; one line per rejection."""
    clock = Clock()
    drops = DropLog(interval_s=5.0, max_lines=20, clock=clock)
    caplog.set_level(logging.INFO, logger="coordinator.drops")
    for i in range(100_000):
        drops.record(f"dev-{i % 3}", "wrong_round", "update for round 999" + "!" * 10_000)
        if i % 10_000 == 0:
            clock.now += 1.0
    drops.flush(force=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 3 + 3 * 3, lines[:5]        # the first per device, then a summary per window
    assert max(len(line) for line in lines) < 400, "details from the wire are cut"
    assert any("dropped" in line and "wrong_round" in line for line in lines)
    assert drops.take()[0] == {"wrong_round": 100_000}


def test_many_senders_do_not_multiply_the_lines(caplog: pytest.LogCaptureFixture) -> None:
    drops = DropLog(max_lines=20, clock=Clock())
    caplog.set_level(logging.INFO, logger="coordinator.drops")
    for i in range(5_000):
        drops.record(f"sybil-{i}", "bad_client_id", "x")
    drops.flush(force=True)
    assert len(caplog.records) == 21
    assert "4980 bad_client_id" in caplog.records[-1].getMessage()
    assert "and at least 995 more" in caplog.records[-1].getMessage()


def test_budget_per_device_and_round() -> None:
    admission = Admission(max_message_bytes=1000, max_messages=3, max_bytes=2500)
    assert admission.admit("a", 2000) == "too_large"
    assert [admission.admit("a", 10) for _ in range(4)] == [None, None, None, "flood"]
    assert admission.admit("b", 900) is None and admission.admit("b", 900) is None
    assert admission.admit("b", 900) == "flood", "over 2,500 bytes this round"
    dropped = admission.take_dropped()
    assert dropped == {("a", "too_large"): 1, ("a", "flood"): 1, ("b", "flood"): 1}
    admission.new_round()
    assert admission.admit("a", 10) is None, "a new round, a new budget"


def test_the_inbox_never_holds_more_than_its_bound_and_delivers_each_message_once() -> None:
    inbox = Inbox(max_bytes=10_000)
    sent = [Inbound(f"t/{i}", bytes(1000), False) for i in range(500)]
    peak: list[int] = []

    def produce() -> None:
        for item in sent:
            assert inbox.put(item, timeout=30)
            peak.append(inbox.held_bytes)

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while len(received) < len(sent):
        item = inbox.get(timeout=30)
        assert item is not None
        received.append(item.topic)
    producer.join()
    assert received == [item.topic for item in sent]
    assert inbox.peak_bytes <= 10_000 and max(peak) <= 10_000


def test_a_message_larger_than_the_bound_still_passes_an_empty_inbox() -> None:
    inbox = Inbox(max_bytes=10)
    assert inbox.put(Inbound("t", bytes(100), False), timeout=1)
    assert not inbox.put(Inbound("t", bytes(1), False), timeout=0.05), "full: the producer waits (backpressure)"
    assert inbox.get(1) is not None and inbox.get(0.01) is None
