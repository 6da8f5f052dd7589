"""Who is asked to train in a round: all online training clients, or a seeded, reproducible sample of them
(Flower's fraction_train / min_train_nodes / min_available_nodes, under fedmq's names)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingRule:
    """How many of the online clients train in a round.

    K = ceil(fraction_train x online), raised to min_train_clients, capped at max_train_clients (0: no cap)
    and at the number online. A round starts only when min_available_clients are online."""

    fraction_train: float = 1.0
    min_train_clients: int = 1
    max_train_clients: int = 0
    min_available_clients: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError("fraction_train must be within (0, 1]")
        if self.min_train_clients < 1 or self.min_available_clients < 1 or self.max_train_clients < 0:
            raise ValueError("min_train_clients and min_available_clients must be at least 1, "
                             "max_train_clients at least 0")

    def size(self, online: int) -> int:
        """How many of `online` clients are sampled."""
        k = max(self.min_train_clients, math.ceil(round(self.fraction_train * online, 9)))
        if self.max_train_clients:
            k = min(k, self.max_train_clients)
        return min(k, online)

    def sample(self, online: Iterable[str], round_: int) -> frozenset[str]:
        """The round's cohort: the K online clients with the smallest sha256("<seed>:<round>:<id>").

        The same seed, round and online set always give the same cohort, on any machine; each client is
        equally likely to be picked, independently of its name."""
        ids = sorted(set(online))
        k = self.size(len(ids))
        if k >= len(ids):
            return frozenset(ids)
        return frozenset(sorted(ids, key=lambda cid: _rank(self.seed, round_, cid))[:k])


def _rank(seed: int, round_: int, client_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{round_}:{client_id}".encode()).digest()
