"""The simulator's settings (one frozen dataclass, validated) and the errors that name a bad flag and its fix.

Built by edge_client/simulate.py from its command line; everything else in the simulator only reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from federation.errors import FedmqError
from federation.protocol.topics import check_level
from federation.transport.mqtt_link import BrokerAddress


class SimulationSettingsError(FedmqError, ValueError):
    """A simulator flag out of range or inconsistent; the message names the flag and what to give instead."""


@dataclass(frozen=True)
class SimulationSettings:
    broker: BrokerAddress
    clients: int
    run: str = "demo"
    topic_prefix: str = "fedmq"
    id_prefix: str = "sim-"
    train_seconds: float = 2.0       # mean simulated training time per round
    train_spread: float = 0.0        # sigma of the log-normal spread of training times (0: every device the mean)
    examples_min: int = 600          # num_examples of a device: drawn uniformly from [min, max] (seeded)
    examples_max: int = 600
    failure_rate: float = 0.0        # probability per round that a device dies while it trains
    rejoin_seconds: float = 5.0      # a dead device comes back after this long
    slowdown: float = 1.0            # slow devices train this many times longer
    slow_fraction: float = 1.0       # the share of devices that are slow (seeded)
    processes: int = 1
    connect_rate: float = 200.0      # first connections per second over the whole fleet (0: all at once, a storm)
    reconnect_jitter_s: float = 2.0  # after a lost connection: wait the backoff plus up to this long
    noise: float = 1e-3              # std of the seeded noise added to the global weights
    seed: int = 0
    chunk_bytes: int | None = None   # None: the round's train.chunk_bytes; else the smaller non-zero of both
    max_payload_mb: float = 64.0
    summary: Path | None = None
    report_every_s: float = 5.0      # the stderr progress line (0: none)
    max_seconds: float = 0.0         # stop after this long even if the run has not ended (0: wait for run_end)

    def __post_init__(self) -> None:
        _in_range("--clients", self.clients, 1, 1_000_000)
        _in_range("--processes", self.processes, 1, 256)
        if self.processes > self.clients:
            raise SimulationSettingsError(f"--processes {self.processes} is more than --clients {self.clients}: "
                                          "give at most one process per device")
        try:
            check_level(self.device_id(self.clients), "a simulated device id")
        except ValueError as exc:
            raise SimulationSettingsError(f"--id-prefix {self.id_prefix!r}: {exc}") from None
        _in_range("--train-seconds", self.train_seconds, 0.0, 86400.0)
        _in_range("--train-spread", self.train_spread, 0.0, 5.0)
        _in_range("--examples", self.examples_min, 1, 1_000_000_000)
        if self.examples_max < self.examples_min:
            raise SimulationSettingsError(f"--examples {self.examples_min}:{self.examples_max}: the range is empty; "
                                          "write LOW:HIGH with LOW <= HIGH")
        _in_range("--failure-rate", self.failure_rate, 0.0, 1.0)
        _in_range("--rejoin-seconds", self.rejoin_seconds, 0.0, 86400.0)
        _in_range("--slowdown", self.slowdown, 1.0, 1000.0)
        _in_range("--slow-fraction", self.slow_fraction, 0.0, 1.0)
        _in_range("--connect-rate", self.connect_rate, 0.0, 1e6)
        _in_range("--reconnect-jitter", self.reconnect_jitter_s, 0.0, 3600.0)
        _in_range("--noise", self.noise, 0.0, 1.0)
        _in_range("--report-every", self.report_every_s, 0.0, 3600.0)
        _in_range("--max-seconds", self.max_seconds, 0.0, 1e7)
        if self.chunk_bytes is not None:
            _in_range("--chunk-bytes", self.chunk_bytes, 0, 1 << 30)
        if self.broker.transport != "tcp" or self.broker.use_tls or self.broker.username:
            raise SimulationSettingsError(f"the simulator speaks plain MQTT over TCP only, not {self.broker.url} "
                                          "(TLS, WebSockets and logins are not simulated): give mqtt://HOST:PORT")

    def device_id(self, index: int) -> str:
        """The client id of device `index` (1-based): the prefix and the index, zero-padded to the fleet's width."""
        return f"{self.id_prefix}{index:0{max(4, len(str(self.clients)))}d}"

    def share(self, worker: int) -> range:
        """The 1-based device indices that worker process `worker` (0-based) drives: contiguous, as even as can be."""
        base, extra = divmod(self.clients, self.processes)
        start = 1 + worker * base + min(worker, extra)
        return range(start, start + base + (1 if worker < extra else 0))


def parse_examples(text: str) -> tuple[int, int]:
    """`--examples N` or `LOW:HIGH` as (low, high); SimulationSettingsError naming the form otherwise."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise SimulationSettingsError(f"--examples {text!r}: give a count (600) or a range LOW:HIGH (100:1000)")


def _in_range(flag: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise SimulationSettingsError(f"{flag} {value:g} is out of range: give {lo:g} to {hi:g}")
