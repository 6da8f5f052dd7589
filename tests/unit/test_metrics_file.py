"""metrics.jsonl stays strict JSON: a diverged model's NaN loss is written as null and read back as NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

from coordinator.metrics import RoundMetrics, append_metrics, read_metrics, rewrite_metrics


def _row(loss: float) -> RoundMetrics:
    return RoundMetrics(round=1, clients=2, examples=10, test_loss=loss, test_accuracy=0.1, bytes_in=1, bytes_out=1,
                        round_time_s=1.0, slowest_train_s=0.5, overhead_s=0.5, aggregate_s=0.0, evaluate_s=0.1,
                        aggregation={"update_norm_max": float("inf")}, cohort=2, ignored={"late": 1})


def _strict(text: str) -> list[dict]:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_nan_and_inf_are_written_as_null(tmp_path: Path) -> None:
    """Issue 10: NaN (and 1e308-derived) values made metrics.jsonl invalid strict JSON."""
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, _row(float("nan")))
    rewrite_metrics(path, [_row(float("nan")), _row(0.5)])
    rows = _strict(path.read_text())
    assert rows[0]["test_loss"] is None and rows[0]["aggregation"]["update_norm_max"] is None
    assert rows[1]["test_loss"] == 0.5 and rows[1]["ignored"] == {"late": 1} and rows[1]["cohort"] == 2
    back = read_metrics(path)
    assert math.isnan(back[0].test_loss) and back[1].test_loss == 0.5


def test_a_row_written_before_elapsed_s_existed_still_reads() -> None:
    """metrics.jsonl and checkpoints of earlier versions have no elapsed_s: a resume or a report must still read them."""
    from coordinator.metrics import RoundMetrics

    row = {"round": 1, "clients": 2, "examples": 10, "test_loss": 0.5, "test_accuracy": 0.8, "bytes_in": 1,
           "bytes_out": 1, "round_time_s": 1.0, "slowest_train_s": 0.5, "overhead_s": 0.5, "aggregate_s": 0.0,
           "evaluate_s": 0.0}
    assert RoundMetrics.from_row(row).elapsed_s == 0.0
