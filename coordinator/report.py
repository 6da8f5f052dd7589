"""`python -m coordinator report RUN_DIR [BASELINE_DIR]`: PNG plots and a Markdown summary of a run's
metrics.jsonl, federated against the centralized baseline when one is given; accuracy for a classification, mean
absolute and root mean squared errors for a regression."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from federation.errors import FedmqError
from coordinator.metrics import RoundMetrics, read_metrics
from federation.cli.version import add_version_flag

if TYPE_CHECKING:
    import matplotlib.axes
    import matplotlib.axis
    import matplotlib.figure

log = logging.getLogger(__name__)

PLOTS = {
    "accuracy_loss": "test accuracy and loss per round",
    "bytes": "bytes per round",
    "round_time": "round time: training and overhead",
    "clients": "clients per round",
    "over_time": "test accuracy over wall-clock time",
}
# A regression run's plots: its errors where a classification has its accuracy.
REGRESSION_PLOTS = {"errors_loss": "test MAE, RMSE and loss per round",
                    **{name: title for name, title in PLOTS.items() if name not in ("accuracy_loss", "over_time")},
                    "over_time": "test RMSE over wall-clock time"}
PLOT_TITLES = {**PLOTS, **REGRESSION_PLOTS}
_FED_STYLE = {"color": "#1f77b4", "marker": "o", "linestyle": "-"}
_CENTRAL_STYLE = {"color": "#d62728", "marker": "s", "linestyle": "--"}


class ReportError(FedmqError, ValueError):
    """A run folder without a readable metrics.jsonl; the message names the file and the problem."""


@dataclass(frozen=True)
class RunMetrics:
    """One run's rows and what to call it."""

    label: str
    run_dir: Path
    rows: list[RoundMetrics]
    epochs_per_round: int = 1

    @property
    def is_regression(self) -> bool:
        return self.rows[-1].is_regression


@dataclass
class ReportFiles:
    out_dir: Path
    markdown: Path
    plots: dict[str, Path] = field(default_factory=dict)


def load_run(run_dir: Path, label: str) -> RunMetrics:
    """Read `run_dir`/metrics.jsonl (and config.json for the epochs per round); ReportError if unusable."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: give a run folder (e.g. runs/<run.name>) that holds metrics.jsonl")
    try:
        rows = read_metrics(path)
    except (ValueError, TypeError) as exc:  # bad JSON, or a row with missing or unknown fields
        raise ReportError(f"{path} is not a fedmq metrics file: {exc}") from None
    if not rows:
        raise ReportError(f"{path} holds no rounds yet")
    epochs = 1
    config = Path(run_dir) / "config.json"
    if config.is_file():
        try:
            epochs = int(json.loads(config.read_text())["training"]["local_epochs"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: no training.local_epochs; assuming 1 epoch per round", config)
    return RunMetrics(label, Path(run_dir), rows, epochs)


def write_report(run_dir: Path, baseline_dir: Path | None = None, out_dir: Path | None = None) -> ReportFiles:
    """Write the PNG plots (PLOTS) and report.md for `run_dir`, against `baseline_dir` if given."""
    fed = load_run(run_dir, "federated")
    central = load_run(baseline_dir, "centralized") if baseline_dir is not None else None
    if central is not None and central.is_regression != fed.is_regression:
        kinds = {True: "a regression", False: "a classification"}
        raise ReportError(f"{run_dir} holds {kinds[fed.is_regression]} run but {baseline_dir} {kinds[central.is_regression]}"
                          " baseline: give the baseline of the same model and data")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out, out / "report.md")
    files.plots = plot_all(fed, central, out)
    files.markdown.write_text(summary_markdown(fed, central, files.plots), encoding="utf-8")
    log.info("report for %s: %s and %d plots", run_dir, files.markdown, len(files.plots))
    return files


# ---- plots --------------------------------------------------------------------------------------------


def plot_all(fed: RunMetrics, central: RunMetrics | None, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, works on servers and in CI
    import matplotlib.pyplot as plt

    quality = "errors_loss" if fed.is_regression else "accuracy_loss"
    paths = {name: out / f"{name}.png" for name in (REGRESSION_PLOTS if fed.is_regression else PLOTS)}
    rounds = [m.round for m in fed.rows]

    if fed.is_regression:
        fig, (ax_mae, ax_rmse, ax_loss) = plt.subplots(1, 3, figsize=(14, 4))
        quality_axes = [(ax_mae, "test_mae", "test MAE", "mean absolute error"),
                        (ax_rmse, "test_rmse", "test RMSE", "root mean squared error")]
    else:
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        quality_axes = [(ax_acc, "test_accuracy", "test accuracy", "accuracy")]
    for run, style in ((fed, _FED_STYLE), (central, _CENTRAL_STYLE)):
        if run is None:
            continue
        label = run.label if run is fed else f"{run.label} ({run.epochs_per_round} epoch(s) per round-equivalent)"
        x = [m.round for m in run.rows]
        for ax, key, _, _ in quality_axes:
            ax.plot(x, [getattr(m, key) for m in run.rows], label=label, **style)
        ax_loss.plot(x, [m.test_loss for m in run.rows], label=label, **style)
    for ax, _, title, ylabel in quality_axes:
        ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax_loss.set(title="test loss", xlabel="round",
                ylabel="loss (the model's)" if fed.is_regression else "loss (cross-entropy)")
    for ax in [a for a, *_ in quality_axes] + [ax_loss]:
        ax.grid(alpha=0.3)
        _integer_ticks(ax.xaxis)
    quality_axes[0][0].legend(loc="upper right" if fed.is_regression else "lower right", fontsize=8)
    fig.suptitle(_title(fed, central))
    _save(fig, paths[quality])

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    ax.bar([r - width / 2 for r in rounds], [m.bytes_in / 1e6 for m in fed.rows], width, label="updates in")
    ax.bar([r + width / 2 for r in rounds], [m.bytes_out / 1e6 for m in fed.rows], width, label="global model published")
    ax.set(title=f"{fed.label}: MQTT payload bytes per round", xlabel="round", ylabel="MB (10^6 bytes)")
    _finish_bars(ax)
    _save(fig, paths["bytes"])

    fig, ax = plt.subplots(figsize=(7, 4))
    training = [m.slowest_train_s for m in fed.rows]
    ax.bar(rounds, training, label="training (slowest client)")
    ax.bar(rounds, [m.overhead_s for m in fed.rows], bottom=training, label="overhead (transfer, waiting, aggregation)")
    ax.set(title=f"{fed.label}: round time", xlabel="round", ylabel="seconds")
    _finish_bars(ax)
    _save(fig, paths["round_time"])

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(rounds, [m.clients for m in fed.rows], label="updates aggregated")
    rejected = [sum(m.rejected.values()) for m in fed.rows]
    if any(rejected):
        ax.bar(rounds, rejected, bottom=[m.clients for m in fed.rows], label="updates rejected")
    ax.set(title=f"{fed.label}: clients per round", xlabel="round", ylabel="clients")
    _finish_bars(ax)
    _integer_ticks(ax.yaxis)
    _save(fig, paths["clients"])

    # Accuracy over wall-clock time: what asynchronous rounds (and stragglers) change, where rounds hide it.
    fig, ax = plt.subplots(figsize=(7, 4))
    key, name = ("test_rmse", "test RMSE") if fed.is_regression else ("test_accuracy", "test accuracy")
    ax.plot(elapsed_times(fed.rows), [getattr(m, key) for m in fed.rows], _FED_STYLE["marker"] + "-",
            color=_FED_STYLE["color"], label=fed.label)
    ax.set(title=f"{fed.label}: {name} over time", xlabel="seconds since the first round started", ylabel=name)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if fed.is_regression else "lower right", fontsize=8)
    _save(fig, paths["over_time"])
    return paths


def elapsed_times(rows: list[RoundMetrics]) -> list[float]:
    """Each round's end in seconds since the first round started: `elapsed_s`, or for runs recorded before it
    existed the running sum of the round times (which leaves out waits between rounds)."""
    if all(m.elapsed_s > 0 for m in rows):
        return [m.elapsed_s for m in rows]
    total, times = 0.0, []
    for m in rows:
        total += m.round_time_s
        times.append(total)
    return times


def _title(fed: RunMetrics, central: RunMetrics | None) -> str:
    title = f"{fed.run_dir.name}: {len(fed.rows)} federated rounds of {fed.epochs_per_round} local epoch(s)"
    if central is not None:
        title += f" vs centralized {len(central.rows) * central.epochs_per_round} epochs"
    return title


def _integer_ticks(axis: "matplotlib.axis.Axis") -> None:
    """Ticks at whole numbers only (rounds, clients), keeping the axis's automatic locator otherwise."""
    from matplotlib.ticker import MaxNLocator

    locator = axis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # matplotlib's AutoLocator is one
        locator.set_params(integer=True)


def _finish_bars(ax: "matplotlib.axes.Axes") -> None:
    _integer_ticks(ax.xaxis)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # head room for the legend above the bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=2)


def _save(fig: "matplotlib.figure.Figure", path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- Markdown -----------------------------------------------------------------------------------------

ROUND_COLUMNS = ("round", "clients", "examples", "test accuracy", "test loss", "bytes in", "bytes out",
                 "round time (s)", "training (s)", "overhead (s)")
CENTRAL_COLUMNS = ("centralized accuracy", "centralized loss")


def summary_markdown(fed: RunMetrics, central: RunMetrics | None, plots: dict[str, Path]) -> str:
    """report.md: a summary (federated against centralized), a table with one row per round, the plots."""
    if fed.is_regression:
        return _regression_markdown(fed, central, plots)
    last = fed.rows[-1]
    best = max(fed.rows, key=lambda m: m.test_accuracy)
    lines = [f"# fedmq report: {fed.run_dir.name}", "",
             f"Federated run `{fed.run_dir}`: {_count(len(fed.rows), 'round')} of {fed.epochs_per_round} local "
             "epoch(s)."]
    if central is not None:
        lines.append(f"Centralized baseline `{central.run_dir}`: {len(central.rows)} round-equivalents of "
                     f"{central.epochs_per_round} epoch(s) on the union of the data.")
    lines += ["", "## Summary", ""]
    head = ["", "federated"] + (["centralized"] if central else [])
    lines += [_row(head), _row(["---"] * len(head))]

    def add(name: str, fed_value: str, central_value: str = "") -> None:
        lines.append(_row([name, fed_value] + ([central_value] if central else [])))

    c_last = central.rows[-1] if central else None
    c_best = max(central.rows, key=lambda m: m.test_accuracy) if central else None
    add("final test accuracy", f"{last.test_accuracy:.4f}", f"{c_last.test_accuracy:.4f}" if c_last else "")
    add("final test loss", f"{last.test_loss:.4f}", f"{c_last.test_loss:.4f}" if c_last else "")
    add("best test accuracy (round)", f"{best.test_accuracy:.4f} ({best.round})",
        f"{c_best.test_accuracy:.4f} ({c_best.round})" if c_best else "")
    add("total bytes (in + out)", str(sum(m.bytes_in + m.bytes_out for m in fed.rows)),
        str(sum(m.bytes_in + m.bytes_out for m in central.rows)) if central else "")
    add("total round time (s)", f"{sum(m.round_time_s for m in fed.rows):.2f}",
        f"{sum(m.round_time_s for m in central.rows):.2f}" if central else "")
    add("training share of round time", _share(fed.rows), _share(central.rows) if central else "")

    lines += ["", "## Per round", ""]
    columns = ROUND_COLUMNS[:5] + (CENTRAL_COLUMNS if central else ()) + ROUND_COLUMNS[5:]
    lines += [_row(list(columns)), _row(["---:"] * len(columns))]
    c_by_round = {m.round: m for m in central.rows} if central else {}
    for m in fed.rows:
        cells = [str(m.round), str(m.clients), str(m.examples), f"{m.test_accuracy:.4f}", f"{m.test_loss:.4f}"]
        if central:
            c = c_by_round.get(m.round)
            cells += [f"{c.test_accuracy:.4f}", f"{c.test_loss:.4f}"] if c else ["", ""]
        cells += [str(m.bytes_in), str(m.bytes_out), f"{m.round_time_s:.2f}", f"{m.slowest_train_s:.2f}",
                  f"{m.overhead_s:.2f}"]
        lines.append(_row(cells))
    return "\n".join(lines + _rejected_and_plots(fed, plots))


def _rejected_and_plots(fed: RunMetrics, plots: dict[str, Path]) -> list[str]:
    lines = []
    rejected = {m.round: m.rejected for m in fed.rows if m.rejected}
    if rejected:
        lines += ["", "Rejected updates: " + "; ".join(
            f"round {r}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
            for r, reasons in rejected.items())]
    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        lines += [f"![{PLOT_TITLES[name]}]({path.name})", ""]
    return lines


REGRESSION_COLUMNS = ("round", "clients", "examples", "test MAE", "test RMSE", "test loss", "bytes in", "bytes out",
                      "round time (s)", "training (s)", "overhead (s)")
CENTRAL_REGRESSION_COLUMNS = ("centralized MAE", "centralized RMSE", "centralized loss")


def _regression_markdown(fed: RunMetrics, central: RunMetrics | None, plots: dict[str, Path]) -> str:
    """report.md of a regression run: MAE, RMSE and loss where a classification has accuracy and loss, and the
    federated RMSE relative to the centralized one."""
    def best(run: RunMetrics) -> RoundMetrics:
        return min(run.rows, key=lambda m: m.test_rmse if m.test_rmse is not None else float("inf"))

    last, c_last = fed.rows[-1], central.rows[-1] if central else None
    lines = [f"# fedmq report: {fed.run_dir.name}", "",
             f"Federated regression run `{fed.run_dir}`: {_count(len(fed.rows), 'round')} of {fed.epochs_per_round} "
             "local epoch(s)."]
    if central is not None:
        lines.append(f"Centralized baseline `{central.run_dir}`: {len(central.rows)} round-equivalents of "
                     f"{central.epochs_per_round} epoch(s) on the union of the data.")
    lines += ["", "## Summary", ""]
    head = ["", "federated"] + (["centralized"] if central else [])
    lines += [_row(head), _row(["---"] * len(head))]

    def add(name: str, fed_value: str, central_value: str = "") -> None:
        lines.append(_row([name, fed_value] + ([central_value] if central else [])))

    add("final test MAE", _num(last.test_mae), _num(c_last.test_mae) if c_last else "")
    add("final test RMSE", _num(last.test_rmse), _num(c_last.test_rmse) if c_last else "")
    add("final test loss", f"{last.test_loss:.4f}", f"{c_last.test_loss:.4f}" if c_last else "")
    add("best test RMSE (round)", f"{_num(best(fed).test_rmse)} ({best(fed).round})",
        f"{_num(best(central).test_rmse)} ({best(central).round})" if central else "")
    if c_last is not None:
        add("final RMSE relative to centralized", rmse_relative(last.test_rmse, c_last.test_rmse), "")
    add("total bytes (in + out)", str(sum(m.bytes_in + m.bytes_out for m in fed.rows)),
        str(sum(m.bytes_in + m.bytes_out for m in central.rows)) if central else "")
    add("total round time (s)", f"{sum(m.round_time_s for m in fed.rows):.2f}",
        f"{sum(m.round_time_s for m in central.rows):.2f}" if central else "")
    add("training share of round time", _share(fed.rows), _share(central.rows) if central else "")

    lines += ["", "## Per round", ""]
    columns = REGRESSION_COLUMNS[:6] + (CENTRAL_REGRESSION_COLUMNS if central else ()) + REGRESSION_COLUMNS[6:]
    lines += [_row(list(columns)), _row(["---:"] * len(columns))]
    c_by_round = {m.round: m for m in central.rows} if central else {}
    for m in fed.rows:
        cells = [str(m.round), str(m.clients), str(m.examples), _num(m.test_mae), _num(m.test_rmse),
                 f"{m.test_loss:.4f}"]
        if central:
            c = c_by_round.get(m.round)
            cells += [_num(c.test_mae), _num(c.test_rmse), f"{c.test_loss:.4f}"] if c else ["", "", ""]
        cells += [str(m.bytes_in), str(m.bytes_out), f"{m.round_time_s:.2f}", f"{m.slowest_train_s:.2f}",
                  f"{m.overhead_s:.2f}"]
        lines.append(_row(cells))
    return "\n".join(lines + _rejected_and_plots(fed, plots))


def rmse_relative(federated: float | None, centralized: float | None) -> str:
    """'+3.2 %': how much larger the federated RMSE is than the centralized one ('n/a' without both)."""
    if federated is None or centralized is None or not centralized > 0:
        return "n/a"
    return f"{100 * (federated - centralized) / centralized:+.1f} %"


def _num(value: float | None) -> str:
    """A regression error: 4 significant digits (targets may be in any unit), n/a when missing."""
    return "n/a" if value is None else f"{value:.4g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _share(rows: list[RoundMetrics]) -> str:
    total = sum(m.round_time_s for m in rows)
    return f"{100 * sum(m.slowest_train_s for m in rows) / total:.1f} %" if total > 0 else "n/a"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m coordinator report",
        description="Write PNG plots and a Markdown summary (report.md) of a run's metrics.jsonl, federated "
                    "against a centralized baseline (python -m coordinator baseline) when one is given.")
    add_version_flag(parser)
    parser.add_argument("run_dir", type=Path, help="the federated run's folder (runs/<run.name>)")
    parser.add_argument("baseline_dir", type=Path, nargs="?", default=None,
                        help="the baseline's folder (runs/<run.name>-centralized)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    from federation.cli.console import configure_logging

    configure_logging(args.log_level)
    try:
        files = write_report(args.run_dir, args.baseline_dir, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {files.markdown}")
    for path in files.plots.values():
        print(f"plot:   {path}")
    return 0
