"""When a round may close: the quorum and deadline rules over the round's cohort, as pure logic over
client sets and time. The round state machine (coordinator.rounds) asks `RoundTracker.decide` on every poll."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Decision(Enum):
    OPEN = "open"            # keep collecting
    CLOSE = "close"          # aggregate what arrived
    OVERDUE = "overdue"      # deadline passed without quorum; keep waiting (on_no_quorum = "wait")
    STOP = "stop"            # deadline passed without quorum; stop the run (on_no_quorum = "stop")


@dataclass(frozen=True)
class QuorumRule:
    min_clients: int
    fraction: float
    deadline_s: float
    on_no_quorum: str = "wait"

    def __post_init__(self) -> None:
        if self.min_clients < 1:
            raise ValueError("min_clients must be at least 1")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if not self.deadline_s > 0:  # also rejects NaN
            raise ValueError("deadline_s must be positive")
        if self.on_no_quorum not in ("wait", "stop"):
            raise ValueError("on_no_quorum must be 'wait' or 'stop'")


@dataclass
class RoundTracker:
    """One round's bookkeeping: its cohort (the clients asked to train), who answered, when it started.

    Only cohort members' updates are accepted (`add` refuses others), so a client that joined after the
    round started can never close it, and every cohort member still training is waited for."""

    rule: QuorumRule
    round: int
    started_at: float
    expected: frozenset[str]                      # the cohort
    received: set[str] = field(default_factory=set)
    fixed_target: int = 0      # async: updates that make a step (buffer_size); 0: from the rule's fraction
    stale: int = 0             # async: stale updates counted (trained on an earlier version; not in `received`)

    @property
    def deadline(self) -> float:
        return self.started_at + self.rule.deadline_s

    @property
    def target(self) -> int:
        """Updates that close the round before its deadline."""
        if self.fixed_target:
            return self.fixed_target
        # round() first: 0.14 * 100 is 14.000000000000002 in floating point, which ceil makes 15
        return max(self.rule.min_clients, math.ceil(round(self.rule.fraction * len(self.expected), 9)))

    def in_cohort(self, client_id: str) -> bool:
        return client_id in self.expected

    def add(self, client_id: str) -> bool:
        """Record an answer; False if this client is outside the cohort or already answered this round."""
        if client_id not in self.expected or client_id in self.received:
            return False
        self.received.add(client_id)
        return True

    def extend(self, members: set[str]) -> None:
        """Ask more clients in this round: when too few cohort members are left online for a quorum."""
        self.expected = self.expected | frozenset(members)

    def missing_for_quorum(self, online: set[str]) -> int:
        """How many more clients must be asked before a quorum is possible again (0: it is possible)."""
        if self.count >= self.rule.min_clients:   # the answers alone are a quorum: no set built (O(1) per event)
            return 0
        return max(0, self.rule.min_clients - self.stale - len(self.received | (set(self.expected) & online)))

    def waiting_for(self, online: set[str]) -> set[str]:
        """Cohort members still online that have not answered."""
        return (set(self.expected) & online) - self.received

    def _anyone_left(self, online: set[str]) -> bool:
        """Whether a cohort member online has not answered yet: stops at the first one (no set built)."""
        received = self.received
        return any(c in online and c not in received for c in self.expected)

    def quorum_possible(self, online: set[str]) -> bool:
        if self.count >= self.rule.min_clients:
            return True
        return len(self.received | (set(self.expected) & online)) + self.stale >= self.rule.min_clients

    @property
    def count(self) -> int:
        """Updates counted: fresh ones (one per client) and stale ones (async)."""
        return len(self.received) + self.stale

    def decide(self, now: float, online: set[str]) -> Decision:
        have = self.count
        if have >= self.rule.min_clients:
            if have >= self.target or not self._anyone_left(online):
                return Decision.CLOSE
            if now >= self.deadline:
                return Decision.CLOSE
            return Decision.OPEN
        if now < self.deadline:
            return Decision.OPEN
        return Decision.STOP if self.rule.on_no_quorum == "stop" else Decision.OVERDUE
