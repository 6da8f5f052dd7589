"""Centralized baseline: `python -m coordinator baseline` trains the run's model in one place on the union
of the clients' data, for the same total epochs, and writes the federated run's metrics format."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from coordinator.metrics import RoundMetrics, append_metrics
from federation.learning.datasets import Dataset
from federation.config.settings import ConfigError, Settings, add_override_flags, load_settings, overrides_from_args
from federation.cli.version import add_version_flag

log = logging.getLogger(__name__)
CENTRAL_ID = "centralized"
# The mapping: a federated run of R rounds of E local epochs is compared with R x E centralized epochs,
# evaluated every E epochs, so metrics.jsonl gets one row per "round-equivalent". In those rows `clients`
# is 1, `examples` the training examples, `bytes_in`/`bytes_out` 0 (nothing travels), `slowest_train_s`
# the training time, `overhead_s` the rest of the row's time (evaluation), `client_ids` ["centralized"].


@dataclass(frozen=True)
class BaselineResult:
    run_dir: Path
    rows: list[RoundMetrics]
    train_examples: int


def baseline_dir(settings: Settings) -> Path:
    """Default output folder: next to the federated run's, `<output_dir>/<run.name>-centralized`."""
    return Path(settings.run.output_dir) / f"{settings.run.name}-{CENTRAL_ID}"


def run_baseline(settings: Settings, max_train_examples: int = 0, out_dir: Path | None = None,
                 dataset: Dataset | None = None) -> BaselineResult:
    """Train `settings.model` centrally, one metrics row per E epochs (see the mapping above).

    `max_train_examples` keeps the first N training examples: the union of clients started with
    `--max-examples N --partition K/n`. The test subset is `evaluation.max_examples`, as in the run."""
    import keras

    from coordinator.evaluation import evaluate_keras, test_split
    from coordinator.run_data import load_run_dataset
    from federation.learning.compile_recipe import compile_with, fitting_labels
    from federation.learning.model_source import ModelChoice, dataset_outputs, load_model_source

    s = settings
    if dataset is None:
        dataset = load_run_dataset(s)  # labels read for the model's task, as in the run
    if max_train_examples < 0:
        raise ValueError(f"max_train_examples must be >= 0, got {max_train_examples}")
    n = min(max_train_examples or len(dataset.y_train), len(dataset.y_train))
    x, y = dataset.x_train[:n], dataset.y_train[:n]
    if n == 0:
        raise ValueError(f"dataset {dataset.name} has no training examples")
    x_test, y_test = test_split(dataset, s.evaluation.max_examples)
    run_dir = Path(out_dir) if out_dir is not None else baseline_dir(s)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    epochs = s.training.local_epochs
    config = {**asdict(s), "baseline": {"train_examples": n, "max_train_examples": max_train_examples,
                                        "total_epochs": s.training.rounds * epochs, "epochs_per_row": epochs}}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    keras.utils.set_random_seed(s.model.seed)  # the same initial weights as the federated run's round 1
    # The run's model and recipe ([model] path, builder or name), as the federated run's devices train it.
    source = load_model_source(ModelChoice(s.model.name, s.model.path, s.model.builder), dataset.input_shape,
                               dataset_outputs(dataset), optimizer=s.training.optimizer,
                               learning_rate=s.training.learning_rate, data_task=dataset.task)
    model = source.model
    compile_with(model, source.recipe, metrics=None if source.task == "regression" else ("accuracy",))
    task = source.task
    labels = fitting_labels(model, y)   # one-hot rows for a loss that takes them, else the class indices
    log.info("centralized baseline for run %r: %s on %d training examples of %s, %d x %d epochs, batch %d; "
             "evaluated on %d test examples; results in %s", s.run.name, source.label, n, dataset.name,
             s.training.rounds, epochs, s.training.batch_size, len(y_test), run_dir)
    rows: list[RoundMetrics] = []
    for r in range(1, s.training.rounds + 1):
        started = time.monotonic()
        model.fit(x, labels, epochs=r * epochs, initial_epoch=(r - 1) * epochs, batch_size=s.training.batch_size,
                  shuffle=True, verbose=0)
        train_s = time.monotonic() - started
        t0 = time.monotonic()
        ev = evaluate_keras(model, x_test, y_test, s.evaluation.batch_size, task)
        evaluate_s = time.monotonic() - t0
        row_s = time.monotonic() - started
        row = RoundMetrics(round=r, clients=1, examples=n, test_loss=ev.loss, test_accuracy=ev.accuracy,
                           bytes_in=0, bytes_out=0, round_time_s=round(row_s, 4), slowest_train_s=round(train_s, 4),
                           overhead_s=round(row_s - train_s, 4), aggregate_s=0.0, evaluate_s=round(evaluate_s, 4),
                           client_ids=[CENTRAL_ID], rejected={}, test_mae=ev.mae, test_rmse=ev.rmse)
        append_metrics(metrics_path, row)
        rows.append(row)
        trained = f"epoch {r}" if epochs == 1 else f"epochs {(r - 1) * epochs + 1}-{r * epochs}"
        log.info("round-equivalent %d/%d (%s): test %s, %.1f s", r, s.training.rounds, trained, ev.describe(), row_s)
    model.save(run_dir / "model.keras")
    from coordinator.export import write_labels

    write_labels(run_dir, dataset.class_names)
    summary = {"run": s.run.name, "kind": CENTRAL_ID, "reason": "completed", "rounds": s.training.rounds,
               "epochs_per_round": epochs, "total_epochs": s.training.rounds * epochs, "train_examples": n,
               "examples_evaluated": int(len(y_test)),
               "keras": {"path": "model.keras", "accuracy": ev.final_accuracy, "loss": ev.loss,
                         **({"mae": ev.mae, "rmse": ev.rmse} if ev.is_regression else {})},
               **({"task": task} if ev.is_regression else {})}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return BaselineResult(run_dir, rows, n)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m coordinator baseline",
        description="Train the run's model centrally on the union of the data (the first N training examples), "
                    "for rounds x local_epochs epochs, and write metrics.jsonl like a federated run.")
    add_version_flag(parser)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (config/default.toml)")
    parser.add_argument("--max-examples", type=int, default=0,
                        help="train on the first N training examples, like clients started with --max-examples N "
                             "(default 0: the whole training set)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run.output_dir>/<run.name>-centralized)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_override_flags(parser)
    args = parser.parse_args(argv)
    from federation.cli.console import configure_logging

    configure_logging(args.log_level, always_info=(__name__,))
    try:
        settings = load_settings(args.config, overrides_from_args(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.max_examples < 0:
        print(f"error: --max-examples must be >= 0, got {args.max_examples}", file=sys.stderr)
        return 2
    from federation.learning.datasets import DatasetError, DatasetNotFoundError

    try:
        result = run_baseline(settings, args.max_examples, args.out)
    except (DatasetNotFoundError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    last = result.rows[-1]
    print(f"centralized baseline: test {result_text(last)} after {len(result.rows)} round-equivalents; metrics in "
          f"{result.run_dir / 'metrics.jsonl'}")
    comparison = compare_with_federated(settings.run_dir / "metrics.jsonl", result.rows)
    if comparison:
        print(comparison)
    return 0


def result_text(m: RoundMetrics) -> str:
    """'accuracy 0.8765, loss 0.3456', or a regression's 'MAE 43.2, RMSE 54.3, loss 2950.1234'."""
    if m.is_regression:
        return f"MAE {m.test_mae:.4g}, RMSE {m.test_rmse:.4g}, loss {m.test_loss:.4f}"
    return f"accuracy {m.test_accuracy:.4f}, loss {m.test_loss:.4f}"


def compare_with_federated(federated_metrics: Path, central: list[RoundMetrics]) -> str:
    """One line comparing the federated run's last round (its metrics.jsonl, when there is one) with the centralized
    row of the same round: accuracy points, or for a regression the RMSE in percent; "" without a federated run."""
    from coordinator.metrics import read_metrics

    try:
        federated = read_metrics(federated_metrics)
    except (OSError, ValueError, TypeError):
        return ""
    if not federated or not central:
        return ""
    fed = federated[-1]
    by_round = {m.round: m for m in central}
    c = by_round.get(fed.round, central[-1])
    if fed.is_regression != c.is_regression:
        return f"federated run {federated_metrics.parent}: not comparable (one is a regression, the other not)"
    where = f"federated run {federated_metrics.parent} after round {fed.round} vs centralized round-equivalent {c.round}"
    if fed.is_regression and fed.test_rmse is not None and c.test_rmse:
        return (f"{where}: RMSE {fed.test_rmse:.4g} vs {c.test_rmse:.4g} "
                f"({100 * (fed.test_rmse - c.test_rmse) / c.test_rmse:+.1f} %), MAE {fed.test_mae:.4g} vs "
                f"{c.test_mae:.4g}")
    return (f"{where}: accuracy {fed.test_accuracy:.4f} vs {c.test_accuracy:.4f} "
            f"({100 * (fed.test_accuracy - c.test_accuracy):+.2f} points)")
