"""Per-round metrics of a run: one dataclass per round, appended as JSON lines to metrics.jsonl.

The same format is written by every run, so plots and reports read any of them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from federation.protocol.messages import RoundMetricsMessage


@dataclass
class RoundMetrics:
    round: int
    clients: int                 # accepted updates
    examples: int                # sum of their num_examples
    test_loss: float
    test_accuracy: float
    bytes_in: int                # update payload bytes accepted this round
    bytes_out: int               # global model payload bytes published for this round
    round_time_s: float          # from publishing the model to closing the round
    slowest_train_s: float       # longest local training time reported by a client
    overhead_s: float            # round_time_s - slowest_train_s
    aggregate_s: float
    evaluate_s: float
    client_ids: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)   # reason -> count
    aggregation: dict = field(default_factory=dict)          # the rule's report: clipped/excluded clients, DP epsilon
    cohort: int = 0                                          # clients asked to train this round
    ignored: dict[str, int] = field(default_factory=dict)    # honest leftovers by reason: late, duplicate


def to_json_line(metrics: RoundMetrics) -> str:
    """One strict-JSON line: a non-finite float (a diverged model's loss) is written as null."""
    return json.dumps(_finite_or_none(asdict(metrics)), allow_nan=False)


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
                rows.append(RoundMetrics(**row))
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

    `history` is every round so far (this one included); its accuracy and loss travel with the message."""
    fields = asdict(metrics)
    round_ = fields.pop("round")
    points = [{"round": m.round, "test_accuracy": m.test_accuracy, "test_loss": m.test_loss} for m in history]
    return RoundMetricsMessage(run=run, round=round_, sender="coordinator", total_rounds=total_rounds,
                               history=points, **fields)
