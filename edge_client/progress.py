"""Training progress and connection state of an edge client: a live rich panel on a terminal, plain
log lines elsewhere. `keras_callback` feeds it from model.fit, batch by batch."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from federation.cli.console import LivePanel

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass
class ClientProgressState:
    """What the panel shows; copied under a lock for every refresh."""

    client_id: str
    broker: str
    phase: str = "waiting for the round's model"
    round: int = 0
    total_rounds: int = 0
    epoch: int = 0                  # 1-based epoch being trained, 0 when not training
    epochs: int = 0
    steps: int = 0                  # batches per epoch
    step: int = 0                   # batches done in the current epoch
    loss: float | None = None
    accuracy: float | None = None
    started: float | None = None    # time.monotonic() when this round's training started
    last_summary: str = ""
    rounds_trained: int = 0
    closed: bool = False            # the client left the run and closed its connection


class ClientProgress(LivePanel):
    """Follows the client for the person at the device. Without a console it only logs; with one it
    draws the connection state, the round and a batch progress bar, refreshed by rich."""

    def __init__(self, client_id: str, broker: str = "", console: Console | None = None,
                 connected: threading.Event | None = None, refresh_per_second: float = 4.0) -> None:
        self._state = ClientProgressState(client_id, broker)
        self._lock = threading.Lock()
        super().__init__(console, refresh_per_second)
        self.connected = connected

    def snapshot(self) -> ClientProgressState:
        with self._lock:
            return replace(self._state)

    # ---- what the client reports --------------------------------------------------------------------

    def training_started(self, round_: int, total_rounds: int, epochs: int) -> None:
        with self._lock:
            s = self._state
            s.phase, s.round, s.total_rounds, s.epochs = "training", round_, total_rounds, epochs
            s.epoch, s.step, s.steps, s.loss, s.accuracy, s.started = 0, 0, 0, None, None, time.monotonic()

    def batch_done(self, epoch: int, step: int, steps: int, logs: dict[str, Any] | None) -> None:
        with self._lock:
            s = self._state
            s.epoch, s.step, s.steps = epoch, step, steps
            if logs:
                s.loss, s.accuracy = _number(logs.get("loss"), s.loss), _number(logs.get("accuracy"), s.accuracy)

    def epoch_done(self, epoch: int, logs: dict[str, Any] | None) -> None:
        with self._lock:
            s = self._state
            if logs:
                s.loss, s.accuracy = _number(logs.get("loss"), s.loss), _number(logs.get("accuracy"), s.accuracy)
            round_, epochs, loss, acc = s.round, s.epochs, s.loss, s.accuracy
            elapsed = time.monotonic() - s.started if s.started is not None else 0.0
        # With one epoch per round the client's own round line says the same.
        log.log(logging.INFO if epochs > 1 else logging.DEBUG,
                "round %d: epoch %d/%d done after %.1f s (loss %s, accuracy %s)", round_, epoch, epochs, elapsed,
                _fmt(loss), _fmt(acc))

    def round_done(self, round_: int, metrics: dict[str, float], train_time_s: float, published: bool) -> None:
        """A round trained: `metrics` are the trainer's (loss and the recipe's metrics, e.g. accuracy or mae)."""
        shown = "".join(f"{name} {value:.4f}, " for name, value in list(metrics.items())[:3])
        with self._lock:
            s = self._state
            s.phase, s.epoch, s.started = "waiting for the next round's model", 0, None
            s.rounds_trained += 1
            s.last_summary = (f"round {round_}: {shown}{train_time_s:.1f} s; "
                              f"update {'published' if published else 'queued until the broker is back'}")

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._state.phase = phase

    def finished(self, phase: str) -> None:
        """The client left the run: the last panel says why, and the connection is closed on purpose."""
        with self._lock:
            self._state.phase, self._state.closed = phase, True

    def keras_callback(self) -> "keras.callbacks.Callback":
        """A Keras callback reporting every batch and epoch of model.fit to this object."""
        return _make_callback(self)

    # ---- drawing ------------------------------------------------------------------------------------

    def render(self) -> RenderableType:
        s = self.snapshot()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column()
        if s.closed:
            link = Text("closed", style="dim")
        elif self.connected is None:
            link = Text("unknown", style="dim")
        elif self.connected.is_set():
            link = Text("connected", style="green")
        else:
            link = Text("disconnected, reconnecting", style="bold red")
        grid.add_row("broker", Text.assemble(f"{s.broker}  " if s.broker else "", link))
        round_text = f"{s.round} / {s.total_rounds}" if s.round else "none yet"
        grid.add_row("round", Text(f"{round_text}  ({s.rounds_trained} trained here)"))
        grid.add_row("state", Text(s.phase))
        if s.phase == "training":
            total = max(1, s.steps * s.epochs)
            done = s.steps * max(0, s.epoch - 1) + s.step
            elapsed = time.monotonic() - s.started if s.started is not None else 0.0
            grid.add_row("progress", Group(
                Text(f"epoch {max(1, s.epoch)}/{s.epochs}, batch {s.step}/{s.steps or '?'}, {elapsed:.0f} s; "
                     f"loss {_fmt(s.loss)}, accuracy {_fmt(s.accuracy)}"),
                ProgressBar(total=total, completed=done, width=40)))
        if s.last_summary:
            grid.add_row("last", Text(s.last_summary))
        return Panel(grid, title=f"fedmq client {s.client_id}", title_align="left", expand=False)


def _number(value: Any, default: float | None) -> float | None:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _make_callback(progress: ClientProgress) -> "keras.callbacks.Callback":
    import keras

    class _ProgressCallback(keras.callbacks.Callback):
        """Forwards model.fit's batches and epochs to a ClientProgress."""

        def __init__(self) -> None:
            super().__init__()
            self._epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._epoch = epoch + 1
            progress.batch_done(self._epoch, 0, int(self.params.get("steps") or 0), None)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            progress.batch_done(self._epoch, batch + 1, int(self.params.get("steps") or 0), logs)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            progress.epoch_done(epoch + 1, logs)

    return _ProgressCallback()
