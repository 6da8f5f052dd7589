"""The read-outs of bench/scale.py, pure: per-round overhead from a metrics file, memory from /proc samples, births
and updates counted by both sides (and what was lost), the fedmq/Flower ratio and the rows of the printed table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One row of the benchmark: a fleet size, a cohort per round and a system (fedmq or Flower)."""

    devices: int
    cohort: int                 # devices asked to train per round
    system: str = "fedmq"

    @property
    def label(self) -> str:
        every = "all" if self.cohort == self.devices else f"{self.cohort:,}"
        return f"{self.devices:,} ({every} training)"


def parse_rows(devices: Sequence[int], sampled: Mapping[int, float], online_cohort: Sequence[str]) -> list[Row]:
    """The fedmq rows: each N of `devices` (with the fraction of `sampled` when it names N, else all of them
    training), then each "ONLINE:COHORT" of `online_cohort`. ValueError names a bad entry."""
    rows = []
    for n in devices:
        if n < 1:
            raise ValueError(f"--devices {n}: give a positive number of devices")
        fraction = sampled.get(n, 1.0)
        rows.append(Row(n, max(1, round(n * fraction))))
    for spec in online_cohort:
        online, _, cohort = spec.partition(":")
        if not (online.isdigit() and cohort.isdigit()) or not 0 < int(cohort) <= int(online):
            raise ValueError(f"--online-cohort {spec!r}: give ONLINE:COHORT, e.g. 5000:1000, with 0 < COHORT <= ONLINE")
        rows.append(Row(int(online), int(cohort)))
    return rows


def parse_sampling(specs: Sequence[str]) -> dict[int, float]:
    """{N: fraction} from "N:FRACTION" entries, e.g. ["5000:0.1"]; ValueError names a bad one."""
    found = {}
    for spec in specs:
        n, _, fraction = spec.partition(":")
        try:
            found[int(n)] = float(fraction)
        except ValueError:
            raise ValueError(f"--sample {spec!r}: give N:FRACTION, e.g. 5000:0.1") from None
        if not 0 < found[int(n)] <= 1:
            raise ValueError(f"--sample {spec!r}: the fraction must be in (0, 1]")
    return found


@dataclass(frozen=True)
class Span:
    """The smallest and largest of some values (None: no values)."""

    low: float | None
    high: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Span":
        return cls(min(values), max(values)) if values else cls(None, None)

    def text(self, unit: str = "", digits: int = 2) -> str:
        if self.low is None or self.high is None:
            return "n/a"
        if round(self.low, digits) == round(self.high, digits):
            return f"{self.low:.{digits}f}{unit}"
        return f"{self.low:.{digits}f} to {self.high:.{digits}f}{unit}"


def overheads(metrics: Sequence[Mapping[str, Any]], train_s: float) -> list[float]:
    """Per round: round time minus the simulated training time. The coordinator's own overhead_s subtracts the
    slowest training its devices report; simulated devices report `train_s`, so both agree when they do."""
    return [float(m["round_time_s"]) - min(train_s, float(m["round_time_s"])) for m in metrics]


def reported_overheads(metrics: Sequence[Mapping[str, Any]]) -> list[float]:
    """The coordinator's overhead_s per round (round_time_s - slowest_train_s)."""
    return [float(m["overhead_s"]) for m in metrics]


def parse_proc_status(text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes from a /proc/PID/status text; (0, 0) for a process gone (no such lines)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in values:
            values[name] = int(rest.split()[0]) * 1024   # the kernel writes kB
    return values["VmRSS"], values["VmHWM"]


@dataclass
class MemoryTrace:
    """One process's memory over a run: the RSS when round 1 starts, and the peak (the kernel's high-water mark,
    which catches peaks between two samples)."""

    at_round_1: int = 0
    peak: int = 0
    samples: int = 0

    def add(self, rss: int, hwm: int, round_1_started: bool) -> None:
        if rss <= 0:
            return
        self.samples += 1
        self.peak = max(self.peak, hwm, rss)
        if round_1_started and not self.at_round_1:
            self.at_round_1 = rss

    def text(self) -> str:
        if not self.samples:
            return "n/a"
        start = f"{self.at_round_1 / 1e6:,.0f}" if self.at_round_1 else "?"
        return f"{start} to {self.peak / 1e6:,.0f} MB"


@dataclass
class Counts:
    """Births and updates of one fedmq row, as the devices (the simulator's summary) and the coordinator (its
    metrics and state) counted them."""

    devices: int
    births_confirmed: int = 0                  # simulator: births the broker acknowledged
    births_seen: int = 0                       # coordinator: training clients online before round 1
    sent: dict[int, int] = field(default_factory=dict)       # round -> updates the broker acknowledged
    accepted: dict[int, int] = field(default_factory=dict)   # round -> updates the coordinator aggregated
    ignored: dict[int, int] = field(default_factory=dict)    # round -> late or duplicate (honest re-sends)
    rejected: dict[int, int] = field(default_factory=dict)   # round -> refused (errors)
    resends: int = 0
    reconnects: int = 0

    @property
    def births_lost(self) -> int:
        """Devices whose birth the coordinator never saw (each device announces itself once it connects)."""
        return max(0, self.devices - self.births_seen)

    def updates_lost(self) -> dict[int, int]:
        """Per round: updates the broker acknowledged that the coordinator neither aggregated nor counted."""
        return {r: max(0, n - self.accepted.get(r, 0) - self.ignored.get(r, 0) - self.rejected.get(r, 0))
                for r, n in sorted(self.sent.items())}

    @property
    def lost(self) -> int:
        return self.births_lost + sum(self.updates_lost().values())

    def text(self) -> str:
        sent, accepted = sum(self.sent.values()), sum(self.accepted.values())
        return (f"births {self.births_seen:,}/{self.births_confirmed:,}, updates {accepted:,}/{sent:,}, "
                f"re-sends {self.resends}, lost {self.lost}")


def counts_from(devices: int, simulator: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]],
                births_seen: int) -> Counts:
    """Counts of one row from the simulator's --summary JSON (its counters, at the top or under "counts"), the
    coordinator's metrics rows and the number of clients its state showed online before round 1."""
    sim = simulator.get("counts", simulator)

    def per_round(name: str) -> dict[int, int]:
        return {int(r): int(n) for r, n in dict(sim.get(name, {})).items()}

    return Counts(
        devices=devices, births_confirmed=int(sim.get("births_confirmed", 0)), births_seen=births_seen,
        sent=per_round("updates_acknowledged"),
        accepted={int(m["round"]): int(m["clients"]) for m in metrics},
        ignored={int(m["round"]): sum(dict(m.get("ignored") or {}).values()) for m in metrics},
        rejected={int(m["round"]): sum(dict(m.get("rejected") or {}).values()) for m in metrics},
        resends=sum(int(n) for n in dict(sim.get("resends_published", {})).values()),
        reconnects=int(sim.get("reconnects", 0)))


def online_count(state: Mapping[str, Any]) -> int:
    """Training clients online in a coordinator_state message (its online_clients list, or a count field)."""
    if isinstance(state.get("online_count"), int):
        return int(state["online_count"])
    return len(state.get("online_clients") or [])


def ratio(fedmq: float | None, flower: float | None) -> str:
    """fedmq / Flower as "0.25x"; "n/a" without both (or a zero Flower value)."""
    if fedmq is None or flower is None or flower <= 0:
        return "n/a"
    return f"{fedmq / flower:.2f}x"


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def load_text(loadavg: str) -> str:
    """The 1, 5 and 15 minute load averages of a /proc/loadavg line ("?" when unreadable)."""
    parts = loadavg.split()
    return " ".join(parts[:3]) if len(parts) >= 3 else "?"
