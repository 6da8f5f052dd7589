"""Command-line pieces the `serve` and `predict` commands share: broker options, logging, the model folder.

Imports nothing heavy: inference-only devices run these commands without TensorFlow."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from federation.settings import Settings


def default_model_dir(run: str) -> Path:
    """Where `serve` keeps the deployed model of `run` unless told otherwise: $FEDMQ_MODEL_DIR/<run> or
    ~/.fedmq/models/<run>."""
    base = os.environ.get("FEDMQ_MODEL_DIR")
    return (Path(base) if base else Path.home() / ".fedmq" / "models") / run


def add_broker_args(parser: argparse.ArgumentParser, default_client_id: str) -> None:
    conn = parser.add_argument_group("broker and run")
    conn.add_argument("--config", type=Path, default=None,
                      help="read [broker] and [run] defaults from this TOML file (config/default.toml)")
    conn.add_argument("--broker", default=None, help="broker host (default: config, else localhost)")
    conn.add_argument("--port", type=int, default=None, help="broker port (default: config, else 1883)")
    conn.add_argument("--mqtt-version", choices=("3.1.1", "5"), default=None)
    conn.add_argument("--run", default=None, help="run id whose deployed model to serve (default: config, else demo)")
    conn.add_argument("--topic-prefix", default=None)
    conn.add_argument("--client-id", default=default_client_id,
                      help=f"this device's name in topics (default: {default_client_id})")


def host_name() -> str:
    return socket.gethostname().split(".")[0] or "device"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_name(args: argparse.Namespace, cfg: Settings) -> str:
    return args.run or cfg.run.name
