"""Tests for coordinator.report: the PNG plots are real, non-empty images, and report.md's tables carry
exactly the numbers of metrics.jsonl (federated, and centralized when a baseline is given)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coordinator.metrics import RoundMetrics, append_metrics
from coordinator.report import PLOTS, ReportError, main, write_report


def federated_rows() -> list[RoundMetrics]:
    return [RoundMetrics(round=r, clients=3 - (r == 2), examples=30000 + r, test_loss=1.0 / r + 0.123456,
                         test_accuracy=0.7 + 0.05 * r + 0.0000123, bytes_in=1801612 + r, bytes_out=900866,
                         round_time_s=20.0 + r / 3, slowest_train_s=18.5 + r / 7, overhead_s=1.5 + r / 3 - r / 7,
                         aggregate_s=0.01, evaluate_s=0.6, client_ids=["a", "b", "c"][: 3 - (r == 2)],
                         rejected={"wrong_round": 1} if r == 2 else {})
            for r in range(1, 5)]


def central_rows(count: int = 4) -> list[RoundMetrics]:
    return [RoundMetrics(round=r, clients=1, examples=60000, test_loss=0.9 / r, test_accuracy=0.75 + 0.04 * r,
                         bytes_in=0, bytes_out=0, round_time_s=30.0 + r, slowest_train_s=29.0 + r, overhead_s=1.0,
                         aggregate_s=0.0, evaluate_s=1.0, client_ids=["centralized"])
            for r in range(1, count + 1)]


def make_run(path: Path, rows: list[RoundMetrics], local_epochs: int = 1) -> Path:
    path.mkdir(parents=True)
    for row in rows:
        append_metrics(path / "metrics.jsonl", row)
    (path / "config.json").write_text(json.dumps({"training": {"local_epochs": local_epochs}}))
    return path


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The Markdown table whose header row starts with `first_header`, as a list of {column: cell}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def assert_png(path: Path, min_size: tuple[int, int] = (500, 300)) -> None:
    assert path.is_file() and path.stat().st_size > 5000, f"{path} is missing or tiny"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path} is blank"
    assert (pixels < 128).mean() > 0.005, f"{path} has next to nothing drawn"


def test_report_with_baseline_writes_plots_and_tables_that_match_the_metrics(tmp_path: Path) -> None:
    fed, central = federated_rows(), central_rows()
    run = make_run(tmp_path / "demo", fed)
    base = make_run(tmp_path / "demo-centralized", central)
    files = write_report(run, base)
    assert files.out_dir == run / "report"
    assert set(files.plots) == set(PLOTS)
    for path in files.plots.values():
        assert_png(path)
    text = files.markdown.read_text()
    for name in PLOTS:
        assert f"]({name}.png)" in text

    table = markdown_table(text, "round")
    assert len(table) == len(fed)
    for cells, m, c in zip(table, fed, central):
        assert int(cells["round"]) == m.round and int(cells["clients"]) == m.clients
        assert int(cells["examples"]) == m.examples
        assert int(cells["bytes in"]) == m.bytes_in and int(cells["bytes out"]) == m.bytes_out
        for column, value, places in (("test accuracy", m.test_accuracy, 4), ("test loss", m.test_loss, 4),
                                      ("round time (s)", m.round_time_s, 2), ("training (s)", m.slowest_train_s, 2),
                                      ("overhead (s)", m.overhead_s, 2), ("centralized accuracy", c.test_accuracy, 4),
                                      ("centralized loss", c.test_loss, 4)):
            assert float(cells[column]) == pytest.approx(value, abs=0.5 * 10 ** -places), column

    summary = {row[""]: row for row in markdown_table(text, "")}
    assert float(summary["final test accuracy"]["federated"]) == pytest.approx(fed[-1].test_accuracy, abs=5e-5)
    assert float(summary["final test accuracy"]["centralized"]) == pytest.approx(central[-1].test_accuracy, abs=5e-5)
    assert float(summary["final test loss"]["federated"]) == pytest.approx(fed[-1].test_loss, abs=5e-5)
    assert int(summary["total bytes (in + out)"]["federated"]) == sum(m.bytes_in + m.bytes_out for m in fed)
    assert int(summary["total bytes (in + out)"]["centralized"]) == 0
    assert float(summary["total round time (s)"]["federated"]) == pytest.approx(
        sum(m.round_time_s for m in fed), abs=0.005)
    best = max(fed, key=lambda m: m.test_accuracy)
    assert summary["best test accuracy (round)"]["federated"] == f"{best.test_accuracy:.4f} ({best.round})"
    assert "round 2: wrong_round 1" in text


def test_report_without_baseline_and_a_shorter_baseline(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", federated_rows())
    files = write_report(run, out_dir=tmp_path / "out")
    text = files.markdown.read_text()
    assert "centralized" not in text
    assert set(markdown_table(text, "round")[0]) == {"round", "clients", "examples", "test accuracy", "test loss",
                                                       "bytes in", "bytes out", "round time (s)", "training (s)",
                                                       "overhead (s)"}
    base = make_run(tmp_path / "b", central_rows(2), local_epochs=3)
    text = write_report(run, base, tmp_path / "out2").markdown.read_text()
    table = markdown_table(text, "round")
    assert table[1]["centralized accuracy"] != "" and table[2]["centralized accuracy"] == ""
    assert "2 round-equivalents of 3 epoch(s)" in text


@pytest.mark.parametrize("content, pattern", [
    (None, "metrics.jsonl does not exist"),
    ("", "holds no rounds yet"),
    ("{not json\n", "is not a fedmq metrics file"),
    ('{"round": 1}\n', "is not a fedmq metrics file"),
])
def test_unusable_run_folders_are_named(tmp_path: Path, content: str | None, pattern: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    with pytest.raises(ReportError, match=pattern) as info:
        write_report(run)
    assert str(run / "metrics.jsonl") in str(info.value)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", federated_rows())
    assert main([str(run), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'rep' / 'report.md'}" in out and out.count("plot:") == len(PLOTS)
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere/metrics.jsonl does not exist" in capsys.readouterr().err


def test_rows_round_trip_through_the_metrics_file(tmp_path: Path) -> None:
    rows = federated_rows()
    run = make_run(tmp_path / "run", rows)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    regression_only = ("test_mae", "test_rmse")  # a classification's lines are as they always were
    assert lines == [{k: v for k, v in asdict(m).items() if k not in regression_only} for m in rows]
    assert re.search(r"\| 4 \| 3 \| 30004 \|", write_report(run).markdown.read_text())


def test_accuracy_over_time_uses_elapsed_s_or_the_sum_of_round_times() -> None:
    from coordinator.metrics import RoundMetrics
    from coordinator.report import elapsed_times

    def row(r: int, round_time: float, elapsed: float) -> RoundMetrics:
        return RoundMetrics(round=r, clients=2, examples=1, test_loss=1.0, test_accuracy=0.5, bytes_in=1,
                            bytes_out=1, round_time_s=round_time, slowest_train_s=0.0, overhead_s=0.0,
                            aggregate_s=0.0, evaluate_s=0.0, elapsed_s=elapsed)

    assert elapsed_times([row(1, 2.0, 3.5), row(2, 2.0, 9.0)]) == [3.5, 9.0]   # waits between rounds count
    assert elapsed_times([row(1, 2.0, 0.0), row(2, 3.0, 0.0)]) == [2.0, 5.0]   # an older run: round times
