"""The round state machine (coordinator.rounds) driven through whole rounds without a broker: waiting for clients,
cohorts, late joiners, dropouts, top-ups, drop reasons, deadlines under on_no_quorum wait and stop. Explicit clock."""

from __future__ import annotations

import pytest

from coordinator.cohort import SamplingRule
from coordinator.quorum import QuorumRule
from coordinator.rounds import Decision, Rounds, WaitState

T0 = 1000.0
DEADLINE = 60.0


def rounds(min_clients: int = 2, fraction: float = 1.0, on_no_quorum: str = "wait", *,
           fraction_train: float = 1.0, min_available: int | None = None, wait_s: float = 0.0,
           grace_s: float = 0.0, seed: int = 0) -> Rounds:
    return Rounds(QuorumRule(min_clients, fraction, DEADLINE, on_no_quorum),
                  SamplingRule(fraction_train, min_clients, 0, min_available or min_clients, seed), "run-1",
                  wait_for_clients_s=wait_s, start_grace_s=grace_s)


def online(r: Rounds, *ids: str) -> None:
    for cid in ids:
        r.client_online(cid)


def answer(r: Rounds, cid: str, round_: int) -> None:
    assert r.check(cid, "update", cid, "run-1", round_) is None, f"{cid}'s update for round {round_} is refused"
    r.accept(cid)


def test_a_whole_run_of_two_rounds() -> None:
    r = rounds(min_clients=2)
    online(r, "a", "b", "c")
    opened = r.open(1, T0)
    assert opened.cohort == {"a", "b", "c"} and opened.target == 3 and opened.deadline == T0 + DEADLINE
    assert r.poll(T0).decision is Decision.OPEN
    answer(r, "a", 1)
    answer(r, "b", 1)
    assert r.poll(T0 + 1).decision is Decision.OPEN, "c is still training and the deadline is far"
    answer(r, "c", 1)
    assert r.poll(T0 + 2).decision is Decision.CLOSE
    closed = r.close(T0 + 2.5)
    assert (closed.round, closed.round_time_s, closed.cohort_size) == (1, 2.5, 3)
    assert r.tracker is None and r.last_closed == 1
    r.open(2, T0 + 10)
    answer(r, "a", 2)
    answer(r, "b", 2)
    r.client_offline("c")
    assert r.poll(T0 + 11).decision is Decision.CLOSE, "no cohort member left to wait for"
    assert r.close(T0 + 11).round == 2


def test_the_quorum_closes_at_the_deadline_with_what_arrived() -> None:
    r = rounds(min_clients=2)
    online(r, "a", "b", "c")
    r.open(1, T0)
    answer(r, "a", 1)
    answer(r, "b", 1)
    assert r.poll(T0 + DEADLINE - 0.1).decision is Decision.OPEN
    assert r.poll(T0 + DEADLINE).decision is Decision.CLOSE
    assert r.timeout(T0 + DEADLINE - 0.2) == pytest.approx(0.2)
    assert r.timeout(T0) == 0.5


def test_no_quorum_at_the_deadline_waits_and_says_so_once() -> None:
    r = rounds(min_clients=2, on_no_quorum="wait")
    online(r, "a", "b")
    r.open(1, T0)
    answer(r, "a", 1)
    assert r.poll(T0 + 1).decision is Decision.OPEN
    first = r.poll(T0 + DEADLINE)
    assert first.decision is Decision.OVERDUE and first.first_overdue
    again = r.poll(T0 + DEADLINE + 5)
    assert again.decision is Decision.OVERDUE and not again.first_overdue
    answer(r, "b", 1)
    assert r.poll(T0 + DEADLINE + 6).decision is Decision.CLOSE


def test_no_quorum_at_the_deadline_stops_the_run_under_stop() -> None:
    r = rounds(min_clients=2, on_no_quorum="stop")
    online(r, "a", "b")
    r.open(1, T0)
    answer(r, "a", 1)
    assert r.poll(T0 + DEADLINE - 1).decision is Decision.OPEN
    assert r.poll(T0 + DEADLINE).decision is Decision.STOP


def test_a_late_joiner_is_not_in_the_cohort_and_can_not_close_the_round() -> None:
    r = rounds(min_clients=2)
    online(r, "a", "b")
    r.open(1, T0)
    online(r, "late")
    drop = r.check("late", "update", "late", "run-1", 1)
    assert drop is not None and drop.reason == "not_in_cohort"
    answer(r, "a", 1)
    assert r.poll(T0 + 1).decision is Decision.OPEN, "b, in the cohort, is still waited for"
    answer(r, "b", 1)
    assert r.poll(T0 + 2).decision is Decision.CLOSE
    r.close(T0 + 2)
    assert "late" in r.open(2, T0 + 3).cohort, "the late joiner is asked in the next round"


def test_a_dropout_below_quorum_tops_the_cohort_up_and_an_answered_member_is_not_asked_again() -> None:
    r = rounds(min_clients=2, fraction_train=0.5, seed=7)
    online(r, "a", "b", "c", "d")
    cohort = r.open(1, T0).cohort
    assert len(cohort) == 2
    first, second = sorted(cohort)
    answer(r, first, 1)
    r.client_offline(second)
    poll = r.poll(T0 + 1)
    assert len(poll.top_up) == 1 and not poll.top_up & cohort, "one more client, from outside the cohort"
    assert poll.cohort == cohort | poll.top_up and poll.decision is Decision.OPEN
    assert not poll.impossible, "the top-up makes the quorum possible again"
    assert r.poll(T0 + 2).top_up == frozenset(), "asked once"
    (added,) = poll.top_up
    answer(r, added, 1)
    assert r.poll(T0 + 3).decision is Decision.CLOSE


def test_too_few_clients_online_makes_the_quorum_impossible_and_it_is_said_once() -> None:
    r = rounds(min_clients=3, min_available=2)
    online(r, "a", "b")
    opened = r.open(1, T0)
    assert opened.cohort == {"a", "b"} and opened.target == 3
    first = r.poll(T0)
    assert first.impossible and first.decision is Decision.OPEN
    assert not r.poll(T0 + 1).impossible
    online(r, "c")
    poll = r.poll(T0 + 2)
    assert poll.top_up == {"c"} and not poll.impossible
    r.client_offline("c")
    assert r.poll(T0 + 3).impossible, "impossible again: said again"


def test_drop_reasons_for_messages_on_update_topics() -> None:
    r = rounds(min_clients=1)
    online(r, "a", "b")
    assert r.check("a", "update", "a", "run-1", 1).reason == "wrong_round", "no round is open"
    r.open(1, T0)
    assert r.check("a", "update", "b", "run-1", 1).reason == "sender_mismatch"
    assert r.check("a", "update", "a", "run-2", 1).reason == "wrong_run"
    assert r.check("a", "update", "a", "run-1", 2).reason == "wrong_round"
    answer(r, "a", 1)
    assert r.check("a", "update", "a", "run-1", 1).reason == "duplicate"
    assert r.check("a", "model_chunk", "a", "run-1", 1).detail == "second update for round 1"
    answer(r, "b", 1)
    r.close(T0 + 1)
    late = r.check("b", "update", "b", "run-1", 1)
    assert late is not None and late.reason == "late" and "has closed" in late.detail
    r.open(2, T0 + 2)
    assert r.check("a", "update", "a", "run-1", 1).reason == "late"
    assert "open round is 2" in r.check("a", "update", "a", "run-1", 3).detail


def test_an_update_from_a_client_seen_offline_brings_it_online() -> None:
    r = rounds(min_clients=1)
    online(r, "a")
    r.open(1, T0)
    r.client_offline("a")
    assert r.check("a", "update", "a", "run-1", 1) is None, "a cohort member's update still counts"
    assert r.accept("a") is True
    assert r.online == {"a"}
    assert r.poll(T0 + 1).decision is Decision.CLOSE


def test_unfit_clients_are_online_but_not_sampled() -> None:
    r = rounds(min_clients=1)
    assert r.client_online("a") is True
    assert r.client_online("b", error="can't train small_cnn") is True
    assert r.client_online("a") is False, "already online"
    assert r.trainable() == {"a"} and r.online == {"a", "b"}
    assert r.open(1, T0).cohort == {"a"}
    r.client_online("b")  # can train again
    assert r.trainable() == {"a", "b"}
    assert r.client_offline("b") is True and r.client_offline("b") is False
    assert "b" not in r.unfit


def test_waiting_for_clients_before_the_first_round_gives_up_after_wait_for_clients_s() -> None:
    r = rounds(min_clients=2, wait_s=30.0)
    r.start_waiting(T0, first=True)
    online(r, "a")
    assert r.waiting(T0 + 29).state is WaitState.WAITING
    assert r.waiting(T0 + 30.5).state is WaitState.GAVE_UP


def test_the_first_round_waits_out_the_start_grace_period() -> None:
    r = rounds(min_clients=2, wait_s=30.0, grace_s=2.0)
    r.start_waiting(T0, first=True)
    online(r, "a", "b")
    waiting = r.waiting(T0 + 1)
    assert waiting.state is WaitState.WAITING and waiting.timeout_s == 0.5
    assert r.waiting(T0 + 2.8).timeout_s == pytest.approx(0.2)
    online(r, "c")
    assert r.waiting(T0 + 3.1).state is WaitState.READY
    assert r.open(1, T0 + 3.1).cohort == {"a", "b", "c"}, "the client that came within the grace period is asked"


def test_later_rounds_wait_for_min_available_clients_without_a_limit_or_grace() -> None:
    r = rounds(min_clients=2, wait_s=30.0, grace_s=5.0)
    r.start_waiting(T0, first=False)
    online(r, "a")
    assert r.waiting(T0 + 1000).state is WaitState.WAITING, "no limit after round 1"
    online(r, "b")
    assert r.waiting(T0 + 1000).state is WaitState.READY, "no grace period after round 1"


def test_sampling_is_reproducible_and_the_fraction_sets_the_target() -> None:
    ids = [f"dev-{i}" for i in range(10)]
    cohorts = []
    for _ in range(2):
        r = rounds(min_clients=2, fraction=0.5, fraction_train=0.4, seed=3)
        online(r, *ids)
        opened = r.open(4, T0)
        cohorts.append(opened.cohort)
        assert len(opened.cohort) == 4 and opened.target == 2 and opened.online == 10
    assert cohorts[0] == cohorts[1] == SamplingRule(0.4, 2, 0, 2, 3).sample(ids, 4)
    r = rounds(min_clients=2, fraction=0.5, fraction_train=0.4, seed=3)
    online(r, *ids)
    assert r.sample(4) == cohorts[0], "sample() is the cohort open() takes by default"
    assert r.open(4, T0, frozenset(ids[:2])).cohort == set(ids[:2]), "or the one it is given"
    r = rounds(min_clients=2, fraction_train=0.4, seed=3)
    online(r, *ids)
    assert r.open(5, T0).cohort != cohorts[0] or r.open(6, T0).cohort != cohorts[0], "cohorts change by round"


# ---- asynchronous buffered aggregation (FedBuff) ------------------------------------------------------------------

def async_rounds(buffer_size: int = 3, max_staleness: int = 2, min_clients: int = 2) -> Rounds:
    return Rounds(QuorumRule(min_clients, 1.0, DEADLINE), SamplingRule(1.0, min_clients, 0, min_clients, 0), "run-1",
                  max_staleness=max_staleness, buffer_size=buffer_size)


def test_async_steps_after_buffer_size_updates_fresh_or_stale() -> None:
    r = async_rounds(buffer_size=3)
    online(r, "fast", "slow", "mid", "late")
    assert r.open(1, T0).target == 3
    for cid in ("fast", "mid"):
        assert r.check(cid, "update", cid, "run-1", 1) is None
        r.accept(cid, 1)
    assert r.poll(T0).decision is Decision.OPEN, "2 of the buffer's 3 updates"
    r.close(T0 + 1)
    r.open(2, T0 + 1)
    # slow trained version 1: one version stale, still counted; fast trains version 2.
    assert r.check("slow", "update", "slow", "run-1", 1) is None
    r.accept("slow", 1)
    assert r.check("fast", "update", "fast", "run-1", 2) is None
    r.accept("fast", 2)
    assert r.received == 2 and r.poll(T0 + 2).decision is Decision.OPEN
    assert r.check("late", "update", "late", "run-1", 2) is None   # a device that joined after the step trains too
    r.accept("late", 2)
    assert r.poll(T0 + 3).decision is Decision.CLOSE


def test_async_refuses_too_stale_future_and_repeated_updates() -> None:
    r = async_rounds(buffer_size=5, max_staleness=2)
    online(r, "a", "b")
    for v in (1, 2, 3, 4):
        r.open(v, T0 + v)
        if v < 4:
            r.close(T0 + v + 0.5)
    assert r.check("a", "update", "a", "run-1", 2) is None           # 2 versions old: accepted
    drop = r.check("a", "update", "a", "run-1", 1)                    # 3 versions old
    assert drop is not None and drop.reason == "stale" and "max_staleness" in drop.detail
    assert r.check("a", "update", "a", "run-1", 5).reason == "wrong_round"
    r.accept("a", 2)
    assert r.check("a", "update", "a", "run-1", 2).reason == "duplicate"
    r.accept("a", 4)
    assert r.check("a", "update", "a", "run-1", 4).reason == "duplicate"
    assert r.check("b", "update", "b", "run-1", 3) is None            # another device, another version: fine
    assert r.received == 2


def test_async_between_steps_checks_against_the_next_version() -> None:
    """Chunks of an update keep arriving while the coordinator aggregates: they are checked against the version
    about to be published, so a one-step-stale update is not dropped as late."""
    r = async_rounds(max_staleness=1)
    online(r, "a", "b")
    r.open(1, T0)
    r.close(T0 + 1)
    assert r.check("a", "update", "a", "run-1", 1) is None
    assert r.check("a", "update", "a", "run-1", 0).reason == "stale"


def test_async_after_a_restart_refuses_versions_it_no_longer_knows() -> None:
    """A resumed coordinator knows only the version it resumed at: an update trained on an older one can't be
    turned into a delta, so it is refused as stale with the reason (its device trains the current version next)."""
    r = async_rounds(max_staleness=5)
    r.oldest_version = r.last_closed = 4
    online(r, "a")
    r.open(5, T0)
    drop = r.check("a", "update", "a", "run-1", 3)
    assert drop is not None and drop.reason == "stale" and "before the coordinator restarted" in drop.detail
    assert r.check("a", "update", "a", "run-1", 5) is None
