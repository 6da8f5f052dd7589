"""Tests for coordinator.quorum: when a round stays open, closes, is overdue or stops. Pure logic, explicit times."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.quorum import Decision, QuorumRule, RoundTracker

T0 = 1000.0
DEADLINE = 60.0


def tracker(expected: set[str], *, min_clients: int = 2, fraction: float = 1.0,
            on_no_quorum: str = "wait", deadline_s: float = DEADLINE) -> RoundTracker:
    rule = QuorumRule(min_clients=min_clients, fraction=fraction, deadline_s=deadline_s, on_no_quorum=on_no_quorum)
    return RoundTracker(rule=rule, round=1, started_at=T0, expected=frozenset(expected))


ABCD = {"a", "b", "c", "d"}


def test_open_before_min_clients() -> None:
    t = tracker(ABCD, min_clients=2)
    assert t.decide(T0, ABCD) is Decision.OPEN
    t.add("a")
    assert t.decide(T0 + 1, ABCD) is Decision.OPEN
    assert t.decide(T0 + DEADLINE - 0.001, ABCD) is Decision.OPEN


def test_close_when_target_reached() -> None:
    t = tracker(ABCD, min_clients=2, fraction=1.0)
    assert t.target == 4
    for client in ("a", "b", "c"):
        t.add(client)
        assert t.decide(T0 + 1, ABCD) is Decision.OPEN
    t.add("d")
    assert t.decide(T0 + 1, ABCD) is Decision.CLOSE


def test_close_early_when_every_expected_online_client_answered() -> None:
    t = tracker(ABCD, min_clients=2, fraction=1.0)
    t.add("a")
    t.add("b")
    assert t.decide(T0 + 1, ABCD) is Decision.OPEN             # c, d still training
    online = {"a", "b", "c"}                                      # d went offline
    assert t.decide(T0 + 1, online) is Decision.OPEN             # c still owes an update
    t.add("c")
    assert t.waiting_for(online) == set()
    assert t.decide(T0 + 1, online) is Decision.CLOSE            # 3 < target 4, but nobody is left to wait for


def test_no_early_close_when_everyone_answered_but_below_min_clients() -> None:
    t = tracker(ABCD, min_clients=3)
    t.add("a")
    t.add("b")
    assert t.decide(T0 + 1, {"a", "b"}) is Decision.OPEN         # c, d offline: nobody to wait for, but 2 < 3
    assert not t.quorum_possible({"a", "b"})


def test_fraction_half_of_four_with_min_clients_one_closes_at_two() -> None:
    t = tracker(ABCD, min_clients=1, fraction=0.5)
    assert t.target == 2
    t.add("a")
    assert t.decide(T0 + 1, ABCD) is Decision.OPEN
    t.add("b")
    assert t.decide(T0 + 1, ABCD) is Decision.CLOSE


def test_min_clients_dominates_a_small_fraction() -> None:
    t = tracker(ABCD, min_clients=3, fraction=0.25)
    assert t.target == 3
    t = tracker(ABCD, min_clients=1, fraction=0.0)
    assert t.target == 1


def test_deadline_with_min_clients_closes() -> None:
    t = tracker(ABCD, min_clients=2)
    t.add("a")
    t.add("b")
    assert t.deadline == T0 + DEADLINE
    assert t.decide(T0 + DEADLINE - 0.001, ABCD) is Decision.OPEN
    assert t.decide(T0 + DEADLINE, ABCD) is Decision.CLOSE
    assert t.decide(T0 + DEADLINE + 100, ABCD) is Decision.CLOSE


@pytest.mark.parametrize("policy, decision", [("wait", Decision.OVERDUE), ("stop", Decision.STOP)])
def test_deadline_without_quorum(policy: str, decision: Decision) -> None:
    t = tracker(ABCD, min_clients=2, on_no_quorum=policy)
    t.add("a")
    assert t.decide(T0 + DEADLINE - 0.001, ABCD) is Decision.OPEN
    assert t.decide(T0 + DEADLINE, ABCD) is decision
    assert t.decide(T0 + 10 * DEADLINE, set()) is decision
    t.add("b")                                                    # a late update still closes the round
    assert t.decide(T0 + 10 * DEADLINE, ABCD) is Decision.CLOSE


def test_a_client_that_joined_mid_round_can_not_close_it() -> None:
    """Issue 9: a late joiner's update used to fill the round's target and close it while a cohort member was
    still training, whose update was then rejected. Now only the cohort counts."""
    t = tracker({"a", "b"}, min_clients=2, fraction=1.0)
    t.add("a")
    assert t.decide(T0 + 1, {"a", "b", "late"}) is Decision.OPEN
    assert t.add("late") is False
    assert t.received == {"a"}
    assert t.decide(T0 + 1, {"a", "b", "late"}) is Decision.OPEN      # b, asked to train, is still training
    assert t.waiting_for({"a", "b", "late"}) == {"b"}
    assert t.add("b")
    assert t.decide(T0 + 2, {"a", "b", "late"}) is Decision.CLOSE


def test_quorum_counts_only_online_cohort_members() -> None:
    t = tracker({"a", "b"}, min_clients=2)
    assert not t.quorum_possible({"a", "x", "y"})       # x and y are online but not asked this round
    assert t.quorum_possible({"a", "b"})


def test_add_returns_false_for_a_duplicate() -> None:
    t = tracker(ABCD)
    assert t.add("a") is True
    assert t.add("a") is False
    assert t.received == {"a"}
    assert t.add("b") is True
    assert len(t.received) == 2


def test_quorum_possible() -> None:
    t = tracker(ABCD, min_clients=3)
    assert t.quorum_possible(ABCD)
    assert t.quorum_possible({"a", "b", "c"})
    assert not t.quorum_possible({"a", "b"})
    t.add("a")
    t.add("b")
    assert not t.quorum_possible(set()) and not t.quorum_possible({"a"})
    assert t.quorum_possible({"c"})
    assert not t.quorum_possible({"new"})                          # only the cohort may answer...
    t.extend({"new"})                                               # ...unless the coordinator asks "new" too
    assert t.quorum_possible({"new"})
    t.add("c")
    assert t.quorum_possible(set())


def test_waiting_for() -> None:
    t = tracker(ABCD)
    assert t.waiting_for(ABCD) == ABCD
    t.add("a")
    t.add("x")                                                     # not expected: never waited for
    assert t.waiting_for(ABCD | {"x", "y"}) == {"b", "c", "d"}
    assert t.waiting_for({"b"}) == {"b"}                           # offline clients are not waited for
    assert t.waiting_for(set()) == set()
    assert isinstance(t.waiting_for(ABCD), set)


def test_empty_cohort_closes_once_the_coordinator_asked_a_newcomer_and_it_answered() -> None:
    t = tracker(set(), min_clients=1)
    assert t.target == 1
    assert t.decide(T0, set()) is Decision.OPEN
    assert t.missing_for_quorum({"newcomer"}) == 1
    assert t.add("newcomer") is False
    t.extend({"newcomer"})
    assert t.missing_for_quorum({"newcomer"}) == 0
    assert t.add("newcomer")
    assert t.decide(T0, {"newcomer"}) is Decision.CLOSE


@pytest.mark.parametrize("percent, n, target", [(14, 100, 14), (7, 100, 7), (28, 100, 28), (70, 10, 7),
                                                (30, 10, 3), (33, 3, 1), (34, 3, 2), (1, 100, 1)])
def test_target_is_not_bumped_by_floating_point_error(percent: int, n: int, target: int) -> None:
    # 0.14 * 100 == 14.000000000000002: a plain ceil() would ask for 15 updates.
    t = tracker({f"c{i}" for i in range(n)}, min_clients=1, fraction=percent / 100)
    assert t.target == target


def test_target_matches_exact_arithmetic_for_every_percentage() -> None:
    # Exhaustive: the float error hits only ~0.1% of (percent, n) pairs, too rare for random sampling.
    wrong = []
    for n in range(0, 201):
        expected = frozenset(f"c{i}" for i in range(n))
        for percent in range(0, 101):
            for min_clients in (1, 5):
                rule = QuorumRule(min_clients=min_clients, fraction=percent / 100, deadline_s=DEADLINE)
                t = RoundTracker(rule=rule, round=1, started_at=T0, expected=expected)
                exact = max(min_clients, math.ceil(Fraction(percent, 100) * n))
                if t.target != exact:
                    wrong.append((percent, n, min_clients, t.target, exact))
    assert not wrong, wrong[:10]


@settings(max_examples=300, deadline=None)
@given(n_expected=st.integers(min_value=0, max_value=8), answered=st.integers(min_value=0, max_value=8),
       offline=st.integers(min_value=0, max_value=8), min_clients=st.integers(min_value=1, max_value=8),
       fraction=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), elapsed=st.floats(0, 2 * DEADLINE),
       policy=st.sampled_from(["wait", "stop"]))
def test_decide_invariants(n_expected: int, answered: int, offline: int, min_clients: int, fraction: float,
                           elapsed: float, policy: str) -> None:
    expected = {f"c{i}" for i in range(n_expected)}
    t = tracker(expected, min_clients=min_clients, fraction=fraction, on_no_quorum=policy)
    for c in sorted(expected)[:answered]:
        t.add(c)
    online = set(sorted(expected)[offline:])
    decision = t.decide(T0 + elapsed, online)
    have = len(t.received)
    if have < min_clients:
        assert decision is not Decision.CLOSE                      # never close below min_clients
        if elapsed < DEADLINE:
            assert decision is Decision.OPEN
        else:
            assert decision is (Decision.STOP if policy == "stop" else Decision.OVERDUE)
    else:
        assert decision in (Decision.OPEN, Decision.CLOSE)
        if have >= t.target or elapsed >= DEADLINE or not t.waiting_for(online):
            assert decision is Decision.CLOSE
        else:
            assert decision is Decision.OPEN


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(min_clients=0, fraction=1.0, deadline_s=1.0), "min_clients"),
    (dict(min_clients=-1, fraction=1.0, deadline_s=1.0), "min_clients"),
    (dict(min_clients=1, fraction=1.5, deadline_s=1.0), "fraction"),
    (dict(min_clients=1, fraction=-0.1, deadline_s=1.0), "fraction"),
    (dict(min_clients=1, fraction=float("nan"), deadline_s=1.0), "fraction"),
    (dict(min_clients=1, fraction=1.0, deadline_s=0.0), "deadline_s"),
    (dict(min_clients=1, fraction=1.0, deadline_s=-5.0), "deadline_s"),
    (dict(min_clients=1, fraction=1.0, deadline_s=float("nan")), "deadline_s"),
    (dict(min_clients=1, fraction=1.0, deadline_s=1.0, on_no_quorum="retry"), "on_no_quorum"),
    (dict(min_clients=1, fraction=1.0, deadline_s=1.0, on_no_quorum=""), "on_no_quorum"),
])
def test_quorum_rule_rejects_bad_values(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        QuorumRule(**kwargs)  # type: ignore[arg-type]


def test_quorum_rule_accepts_edge_values() -> None:
    QuorumRule(min_clients=1, fraction=0.0, deadline_s=0.001)
    QuorumRule(min_clients=1, fraction=1.0, deadline_s=1e9, on_no_quorum="stop")
