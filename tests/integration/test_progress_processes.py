"""Tests for the live progress of the coordinator (coordinator.progress) and of an edge client
(edge_client.progress), and for the logging set-up: a panel on a terminal, plain lines elsewhere.

The tests of test_progress.py that start processes or import TensorFlow (the unit tier does neither)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import numpy as np

from edge_client.progress import ClientProgress
from tests.support import REPO_ROOT




def test_keras_callback_reports_every_batch_and_epoch(caplog) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    progress = ClientProgress("c1")
    seen: list[tuple[int, int, int]] = []
    original = progress.batch_done
    progress.batch_done = lambda e, s, n, logs: (seen.append((e, s, n)), original(e, s, n, logs))  # type: ignore
    progress.training_started(1, 4, epochs=2)
    x, y = np.random.default_rng(0).normal(size=(40, 4)).astype("float32"), np.arange(40) % 3
    with caplog.at_level("INFO", logger="edge_client.progress"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[progress.keras_callback()])
    batches = [(e, s) for e, s, n in seen if s]
    assert batches == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert {n for _, _, n in seen} == {3}
    state = progress.snapshot()
    assert state.epoch == 2 and state.step == 3 and state.loss is not None and 0 <= state.accuracy <= 1
    assert [r.getMessage().split(" done")[0] for r in caplog.records] == ["round 1: epoch 1/2", "round 1: epoch 2/2"]


# ---- logging and terminal detection ----------------------------------------------------------------------


def run_python(code: str, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter, without the variables that make rich pretend to have a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(PYTHONPATH=str(REPO_ROOT), TERM="xterm-256color")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, text=True, timeout=60,
                          stdout=subprocess.PIPE, stderr=stderr)


def test_log_level_is_honoured_and_the_round_line_always_shows() -> None:
    out = run_python(
        "import logging\n"
        "from coordinator.progress import ROUND_LOG, configure_logging\n"
        "configure_logging('WARNING')\n"
        "logging.getLogger('coordinator.engine').info('an info line')\n"
        "logging.getLogger('coordinator.engine').warning('a warning line')\n"
        "ROUND_LOG.info('round 1/5: 2 clients')\n")
    assert out.returncode == 0, out.stderr
    assert "an info line" not in out.stderr
    assert "WARNING coordinator.engine: a warning line" in out.stderr
    assert "INFO    coordinator.rounds: round 1/5: 2 clients" in out.stderr
    debug = run_python("import logging\nfrom coordinator.progress import configure_logging\n"
                       "configure_logging('DEBUG')\nlogging.getLogger('x').debug('a debug line')\n")
    assert "DEBUG   x: a debug line" in debug.stderr


def test_terminal_console_only_when_stderr_is_a_tty() -> None:
    code = "from federation.cli.console import terminal_console; print(terminal_console() is not None)"
    piped = run_python(code)
    assert piped.stdout.strip() == "False", piped.stderr
    controller, terminal = pty.openpty()
    try:
        on_tty = run_python(code, stderr=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert on_tty.stdout.strip() == "True"
