"""Per-round metrics of a run: one dataclass per round, appended as JSON lines to metrics.jsonl.

The same format is written by every run, so plots and reports read any of them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from federation.protocol.messages import RoundMetricsMessage, RoundResults


@dataclass
class RoundMetrics(RoundResults):
    """One closed round: its number and its results, whose fields (federation.protocol.messages.RoundResults) are the
    round_metrics message's too."""

    round: int = field(kw_only=True)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RoundMetrics":
        """A metrics.jsonl row (or a checkpoint's); TypeError when a required field is missing or one is unknown."""
        missing = [name for name in _REQUIRED if name not in row]
        if missing:
            raise TypeError(f"a round's metrics without {', '.join(missing)}")
        return cls(**row)


# Every round's row has these (the lists and maps, cohort and elapsed_s came later and may be missing in older files).
_REQUIRED = ("round", *(f.name for f in fields(RoundResults) if f.type in ("int", "float")
                         and f.name not in ("cohort", "elapsed_s")))


@dataclass
class RoundStats:
    """What the open round's accepted updates add up to, for its RoundMetrics."""

    bytes_in: int = 0
    examples: int = 0
    longest_train_s: float = 0.0   # the longest local training reported (a float, not a list per update)
    client_ids: list[str] = field(default_factory=list)

    def add(self, client_id: str, size: int, examples: int, train_s: float) -> None:
        self.bytes_in += size
        self.examples += examples
        self.longest_train_s = max(self.longest_train_s, train_s)
        self.client_ids.append(client_id)

    def slowest_train_s(self, round_time_s: float) -> float:
        """The longest local training reported, at most the round's time (a device's clock may lie)."""
        return min(self.longest_train_s, round_time_s)


def to_json_line(metrics: RoundMetrics) -> str:
    """One strict-JSON line: a non-finite float (a diverged model's loss, a regression's accuracy) is written as
    null; test_mae and test_rmse only in a regression run (a classification's line is as it always was)."""
    row = {"round": metrics.round, **asdict(metrics)}
    if not metrics.is_regression:
        del row["test_mae"], row["test_rmse"]
    return json.dumps(_finite_or_none(row), allow_nan=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def append_metrics(path: Path, metrics: RoundMetrics) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(to_json_line(metrics) + "\n")


def read_metrics(path: Path) -> list[RoundMetrics]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                for key in ("test_loss", "test_accuracy"):
                    row[key] = float("nan") if row.get(key) is None else row[key]
                if row.get("test_mae", "absent") is None or row.get("test_rmse", "absent") is None:
                    row["test_mae"] = float("nan") if row.get("test_mae") is None else row["test_mae"]
                    row["test_rmse"] = float("nan") if row.get("test_rmse") is None else row["test_rmse"]
                rows.append(RoundMetrics.from_row(row))
    return rows


def rewrite_metrics(path: Path, rows: list[RoundMetrics]) -> None:
    """Replace the file with exactly `rows` (atomically), e.g. when resuming from a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(to_json_line(m) + "\n" for m in rows)
    tmp.replace(path)


def round_metrics_message(metrics: RoundMetrics, run: str, total_rounds: int,
                          history: list[RoundMetrics]) -> RoundMetricsMessage:
    """The `round_metrics` message (PROTOCOL.md) the coordinator publishes, retained, after each round.

    `history` is every round so far (this one included); its accuracy and loss (and a regression's errors)
    travel with the message."""
    fields = asdict(metrics)
    round_ = fields.pop("round")
    points = [history_point(m) for m in history]
    return RoundMetricsMessage(run=run, round=round_, sender="coordinator", total_rounds=total_rounds,
                               history=points, **fields)


def history_point(m: RoundMetrics) -> dict[str, Any]:
    """One round's point of round_metrics.history: round, test accuracy and loss, the wall-clock seconds since the
    run's first round (when recorded), and a regression's errors."""
    point: dict[str, Any] = {"round": m.round, "test_accuracy": m.test_accuracy, "test_loss": m.test_loss}
    if m.elapsed_s > 0:
        point["elapsed_s"] = m.elapsed_s
    if m.is_regression:
        point.update(test_mae=m.test_mae, test_rmse=m.test_rmse)
    return point
