"""Command-line pieces the `serve` and `predict` commands share: broker options, logging, the model folder.

Imports nothing heavy: inference-only devices run these commands without TensorFlow."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from federation.cli.broker_flags import add_connection_flags
from federation.config.settings import Settings


def default_model_dir(run: str) -> Path:
    """Where `serve` keeps the deployed model of `run` unless told otherwise: $FEDMQ_MODEL_DIR/<run> or
    ~/.fedmq/models/<run>."""
    base = os.environ.get("FEDMQ_MODEL_DIR")
    return (Path(base) if base else Path.home() / ".fedmq" / "models") / run


def default_state_dir(run: str, client_id: str) -> Path:
    """Where a training device keeps its state (the error-feedback residual) unless told otherwise:
    $FEDMQ_STATE_DIR/<run>/<client id> or ~/.fedmq/state/<run>/<client id>."""
    base = os.environ.get("FEDMQ_STATE_DIR")
    return (Path(base) if base else Path.home() / ".fedmq" / "state") / run / client_id


def add_broker_args(parser: argparse.ArgumentParser, default_client_id: str) -> None:
    """The broker and run flags every command shares (federation/cli/broker_flags.py); TLS and login come with
    edge_client.security_flags.add_security_flags."""
    add_connection_flags(parser, default_client_id)


def host_name() -> str:
    return socket.gethostname().split(".")[0] or "device"


def unique_client_id() -> str:
    """The default client id of a training client: `<host>-<pid>`, so that two processes on one machine never
    share one (the broker would drop each whenever the other connects)."""
    return f"{host_name()}-{os.getpid()}"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_name(args: argparse.Namespace, cfg: Settings) -> str:
    return args.run or cfg.run.name
