"""Command line of the coordinator: `python -m coordinator run [--config FILE] [--section.key VALUE ...]`,
`evaluate MODEL`, `baseline` (centralized training), `report RUN_DIR [BASELINE_DIR]` and `dashboard`.

Without any argument it only prints how to start a run: a run moves earlier results aside, so it never starts
by accident."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from federation.cli.broker_flags import add_broker_flags, settings_overrides
from federation.config.settings import ConfigError, add_override_flags, load_settings, overrides_from_args
from federation.cli.version import add_version_flag

if TYPE_CHECKING:
    from rich.console import Console

    from federation.learning.datasets import Dataset

log = logging.getLogger("coordinator")
COMMANDS = ("run", "evaluate", "baseline", "report", "dashboard", "relay")
# Commands whose code lives in their own module, each with a main(argv) -> exit code.
MODULE_COMMANDS = {"baseline": "coordinator.baseline", "report": "coordinator.report",
                   "dashboard": "coordinator.dashboard.server", "relay": "coordinator.relay_cli"}


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the log


USAGE = """usage: python -m coordinator run [--config FILE] [--section.key VALUE ...]   start or resume a run
       python -m coordinator evaluate MODEL                                      test a .keras or .tflite model
       python -m coordinator baseline | report | dashboard ...
       python -m coordinator relay --site NAME --upstream CENTRAL --local SITE_BROKER   a site relay

A run connects to the broker ([broker] host, or --broker ADDRESS) and writes runs/<run.name>/; a finished
run there is moved aside when the new run's first round starts. `python -m coordinator --config FILE ...`
(any argument) also starts a run. Help: python -m coordinator run --help"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    command = argv.pop(0) if argv[0] in COMMANDS else "run"
    if command in MODULE_COMMANDS:
        import importlib

        return importlib.import_module(MODULE_COMMANDS[command]).main(argv)
    return {"run": run_command, "evaluate": evaluate_command}[command](argv)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (config/default.toml)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _setup_logging(level: str, console: "Console | None" = None) -> None:
    from coordinator.progress import configure_logging

    configure_logging(level, console)


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coordinator run",
                                     description="Run a federated training over MQTT and export the model.",
                                     epilog="Other commands: evaluate, baseline, report, dashboard "
                                            "(python -m coordinator COMMAND --help).", allow_abbrev=False)
    add_version_flag(parser)
    add_broker_flags(parser, None, "the coordinator's MQTT client id (default: fedmq-coordinator-<run>)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_override_flags(parser)
    return parser


def run_command(argv: list[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    try:
        overrides = {**overrides_from_args(args), **settings_overrides(args)}
    except ValueError as exc:
        parser.error(str(exc))
    from coordinator.progress import RunProgress, terminal_console

    console = terminal_console()  # a live progress panel on a terminal; plain log lines otherwise
    _setup_logging(args.log_level, console)
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from coordinator.checkpoint import CheckpointMismatchError
    from coordinator.engine import Coordinator
    from coordinator.final_publish import FinalPublishError
    from federation.learning.datasets import DatasetError, DatasetNotFoundError
    from federation.learning.model_source import ModelSourceError
    from federation.transport.mqtt_link import BrokerRefusedError, CredentialsError

    try:
        with RunProgress(settings.run.name, settings.training.rounds, console) as progress:
            result = Coordinator(settings, progress=progress, client_id=args.client_id).run()
            progress.finished("done" if result.reason == "completed" else "stopped", result.detail)
    except (DatasetNotFoundError, DatasetError) as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return 2
    except ModelSourceError as exc:  # [model] path, builder or name that gives no trainable model
        print(f"model error: {exc}", file=sys.stderr)
        return 2
    except (CredentialsError, BrokerRefusedError) as exc:
        print(f"broker login error: {exc}", file=sys.stderr)
        return 2
    except CheckpointMismatchError as exc:  # the run folder holds another run's unfinished checkpoint
        print(f"resume error: {exc}", file=sys.stderr)
        return 2
    except FinalPublishError as exc:  # the run finished, but the broker never confirmed its end
        print(f"broker error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    return 0 if result.reason == "completed" else 1


def evaluate_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator evaluate", allow_abbrev=False,
                                     description="Evaluate a saved .keras or .tflite model on the full test set.")
    add_version_flag(parser)
    parser.add_argument("model", type=Path, help="a .keras or .tflite file")
    _common(parser)
    parser.add_argument("--dataset", default=None, help="dataset name or image folder (default: from the config)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-examples", type=int, default=0, help="evaluate on the first N test examples")
    parser.add_argument("--task", choices=("classification", "regression"), default=None,
                        help="what the model does (default: a .keras file's compile recipe says; else a table's "
                             "float targets make a regression): accuracy, or MAE and RMSE")
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"error: {args.model} does not exist", file=sys.stderr)
        return 2
    from coordinator.evaluation import evaluate_file, keras_file_task
    from federation.learning.datasets import DatasetError, DatasetNotFoundError, load_dataset
    from federation.learning.tables import DataMismatchError
    from coordinator.evaluation import table_options

    task = args.task or (keras_file_task(args.model) if args.model.suffix == ".keras" else None)

    def load(wanted: str) -> "Dataset":
        return load_dataset(args.dataset or settings.model.dataset,
                            data_dir=args.data_dir or settings.model.data_dir or None,
                            image_size=tuple(settings.model.image_size) or None,
                            table=table_options(settings.data), task=wanted)

    try:
        try:
            dataset = load(task or "classification")
        except DataMismatchError:
            if task is not None:
                raise
            dataset = load("regression")  # float targets, and nothing says otherwise
        ev = evaluate_file(args.model, dataset, args.max_examples)
    except (DatasetNotFoundError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model}: test {ev.describe()} on {ev.examples} examples of {dataset.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
