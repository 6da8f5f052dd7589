"""What a simulator process counted (births, updates per round, re-sends, failures, reconnects, models, bytes), how
the counts of several processes add up, and how they are shown: the --summary JSON and the stderr progress line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Plain integer counters, summed across processes.
TOTALS = ("devices", "connected", "connects", "reconnects", "connect_errors", "births_published", "births_confirmed",
          "models_received", "not_asked", "trainings_started", "trainings_abandoned", "failures", "rejoins",
          "left", "bytes_in", "bytes_out")
# Per-round counters: round -> count.
PER_ROUND = ("updates_published", "updates_acknowledged", "resends_published", "resends_acknowledged")


@dataclass
class SimCounts:
    """Counters of one process (or, merged, of the fleet). `connected` is a gauge: connections up now."""

    devices: int = 0
    connected: int = 0
    connects: int = 0                # CONNACKs accepted, first connections and reconnections
    reconnects: int = 0              # CONNACKs after the first of an incarnation (a lost connection came back)
    connect_errors: int = 0          # connection attempts that failed (broker down, refused)
    births_published: int = 0        # online statuses published (after every CONNACK, and re-announcements)
    births_confirmed: int = 0        # ... acknowledged by the broker (PUBACK)
    models_received: int = 0         # global models delivered to a device (each device counts each delivery)
    not_asked: int = 0               # models of rounds a device was not in the cohort of
    trainings_started: int = 0
    trainings_abandoned: int = 0     # sync: a newer model came while training; the update would be late
    failures: int = 0                # deaths injected (--failure-rate)
    rejoins: int = 0                 # dead devices that connected again
    left: int = 0                    # devices that left at run_end (offline status acknowledged)
    bytes_in: int = 0                # payload bytes received
    bytes_out: int = 0               # payload bytes published (chunks and manifests included)
    cpu_s: float = 0.0               # user + system CPU seconds of the process(es)
    updates_published: Counter[int] = field(default_factory=Counter)
    updates_acknowledged: Counter[int] = field(default_factory=Counter)
    resends_published: Counter[int] = field(default_factory=Counter)
    resends_acknowledged: Counter[int] = field(default_factory=Counter)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able dict (rounds as string keys, in order): what a worker sends its parent, and the summary."""
        out: dict[str, Any] = {name: getattr(self, name) for name in TOTALS}
        out["cpu_s"] = round(self.cpu_s, 3)
        for name in PER_ROUND:
            counter: Counter[int] = getattr(self, name)
            out[name] = {str(r): counter[r] for r in sorted(counter)}
        return out

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> "SimCounts":
        counts = cls(cpu_s=float(raw.get("cpu_s", 0.0)))
        for name in TOTALS:
            setattr(counts, name, int(raw.get(name, 0)))
        for name in PER_ROUND:
            getattr(counts, name).update({int(r): int(n) for r, n in raw.get(name, {}).items()})
        return counts

    @classmethod
    def merged(cls, parts: list["SimCounts"]) -> "SimCounts":
        total = cls()
        for part in parts:
            for name in TOTALS:
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.cpu_s += part.cpu_s
            for name in PER_ROUND:
                getattr(total, name).update(getattr(part, name))
        return total

    def progress_line(self, elapsed_s: float) -> str:
        """One short line for stderr: connections, births, the latest round's updates, failures, traffic, CPU."""
        last = max(self.updates_published, default=0)
        cpu = 100.0 * self.cpu_s / elapsed_s if elapsed_s > 0 else 0.0
        return (f"simulate {elapsed_s:6.1f} s: {self.connected}/{self.devices} connected, births "
                f"{self.births_confirmed}/{self.births_published} acked, round {last}: "
                f"{self.updates_acknowledged[last]}/{self.updates_published[last]} updates acked, resends "
                f"{sum(self.resends_published.values())}, failures {self.failures}, reconnects {self.reconnects}, "
                f"models {self.models_received}, in {self.bytes_in / 1e6:.1f} MB, out {self.bytes_out / 1e6:.1f} MB, "
                f"left {self.left}, CPU {cpu:.0f}%")
