"""Seeded, reproducible draws for each simulated device: its examples, its training time in a round, whether and when
it dies in a round, when it first connects and how long it waits before reconnecting.

Pure functions of (settings, device index, round, attempt): the same seed gives the same fleet in any process."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_client.simulator.settings import SimulationSettings

# Stream tags: one independent random stream per kind of draw.
_EXAMPLES, _TRAIN, _SLOW, _FAILURE, _CONNECT, _RECONNECT, _NOISE, _NOISE_POOL = range(8)
RECONNECT_BACKOFF_MIN_S = 1.0
RECONNECT_BACKOFF_MAX_S = 30.0


def _rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, *keys])


def noise_rng(seed: int, index: int, round_: int) -> np.random.Generator:
    """The stream of device `index`'s update noise in `round_` (a re-send makes the same update again)."""
    return _rng(seed, _NOISE, index, round_)


def noise_pool_rng(seed: int, round_: int) -> np.random.Generator:
    """The stream of `round_`'s noise pool, shared by a process's devices (update_maker)."""
    return _rng(seed, _NOISE_POOL, round_)


def num_examples(s: SimulationSettings, index: int) -> int:
    if s.examples_min == s.examples_max:
        return s.examples_min
    return int(_rng(s.seed, _EXAMPLES, index).integers(s.examples_min, s.examples_max + 1))


def is_slow(s: SimulationSettings, index: int) -> bool:
    return s.slowdown > 1.0 and float(_rng(s.seed, _SLOW, index).random()) < s.slow_fraction


def train_seconds(s: SimulationSettings, index: int, round_: int, attempt: int = 0) -> float:
    """Training time of device `index` in `round_`: log-normal with mean `train_seconds` and sigma `train_spread`,
    times `slowdown` for a slow device."""
    mean = s.train_seconds
    if s.train_spread > 0 and mean > 0:
        mu = math.log(mean) - s.train_spread ** 2 / 2   # so that the mean of the draws is `mean`
        mean = float(math.exp(mu + s.train_spread * _rng(s.seed, _TRAIN, index, round_, attempt).standard_normal()))
    return mean * (s.slowdown if is_slow(s, index) else 1.0)


@dataclass(frozen=True)
class Failure:
    """The device dies `after_s` seconds into its training (socket closed without DISCONNECT: its will fires)."""

    after_s: float


def failure(s: SimulationSettings, index: int, round_: int, attempt: int, train_s: float) -> Failure | None:
    """Whether device `index` dies during attempt `attempt` of its training in `round_`, and when."""
    if s.failure_rate <= 0:
        return None
    rng = _rng(s.seed, _FAILURE, index, round_, attempt)
    if float(rng.random()) >= s.failure_rate:
        return None
    return Failure(after_s=train_s * float(rng.uniform(0.1, 0.9)))


def connect_delay(s: SimulationSettings, index: int) -> float:
    """Seconds after the start until device `index` first connects: `connect_rate` devices per second over the
    whole fleet, each at a jittered moment of its own slot; all at 0 when the rate is 0 (an announcement storm)."""
    if s.connect_rate <= 0:
        return 0.0
    slot = 1.0 / s.connect_rate
    return (index - 1 + float(_rng(s.seed, _CONNECT, index).random())) * slot


def reconnect_delay(s: SimulationSettings, index: int, attempt: int) -> float:
    """Before reconnect attempt `attempt` (0 first) after a lost connection: an exponential backoff from 1 s (0 at
    the first attempt, so that a restarted broker sees everyone back at once when the jitter is 0), capped at 30 s,
    plus up to `reconnect_jitter_s` seconds."""
    backoff = 0.0 if attempt == 0 else min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_MIN_S * 2 ** (attempt - 1))
    jitter = float(_rng(s.seed, _RECONNECT, index, attempt).random()) * s.reconnect_jitter_s
    return backoff + jitter
