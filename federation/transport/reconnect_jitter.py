"""Randomized reconnect delays ("full jitter"), so that a fleet that lost its broker does not come back all at once.

paho's own backoff doubles a fixed delay: every device dropped by a broker restart would retry on the same beat.
MqttLink asks ReconnectJitter for the next delay before each retry (README "Running a fleet")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FLOOR_S = 0.1
"""The shortest delay: never a busy retry loop."""


def jittered_delay(attempt: int, rng: random.Random, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """The delay before retry number `attempt` (0 for the first retry after a drop): uniform over
    [FLOOR_S, window], where the window doubles from `first_s` with each failed attempt, up to `cap_s`."""
    window = min(cap_s, first_s * 2.0 ** min(attempt, 32))
    return rng.uniform(min(FLOOR_S, window), window)


@dataclass
class ReconnectJitter:
    """The attempts since the last successful connect, and the delay before the next one."""

    first_s: float = 1.0
    cap_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)   # seeded from the OS: one sequence per process
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(f"reconnect delays need 0 < first_s <= cap_s, got {self.first_s} and {self.cap_s}")

    def next_delay(self) -> float:
        """The delay before the next attempt; each call is one more failed attempt."""
        delay = jittered_delay(self.attempt, self.rng, self.first_s, self.cap_s)
        self.attempt += 1
        return delay

    def connected(self) -> None:
        """A connect succeeded: the next drop starts from the first window again."""
        self.attempt = 0
