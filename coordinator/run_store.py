"""The run folder: resume from its checkpoint or set an earlier run aside, then metrics.jsonl, the checkpoint after
every round, each round's Keras model, config.json and summary.json.

Nothing is written before `claim`, so a coordinator that never reaches its broker or clients leaves the folder alone."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from coordinator.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from coordinator.export import write_labels
from coordinator.metrics import RoundMetrics, append_metrics, rewrite_metrics
from federation.config.settings import Settings

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class RunStore:
    """One run's folder (settings.run_dir) and what the coordinator keeps in it."""

    def __init__(self, settings: Settings, run_dir: Path | None = None) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir) if run_dir is not None else settings.run_dir
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.history: list[RoundMetrics] = []
        self.earlier_run: tuple[str, int] | None = None   # a finished/unwanted run in run_dir: (what, rounds)

    def usable_checkpoint(self, fingerprint: str) -> Checkpoint | None:
        """The checkpoint to resume (its metrics become the history), or None when the earlier run in the folder is
        finished or unwanted: that one is set aside by `claim`, once the new run really starts. Raises
        CheckpointMismatchError for an unfinished run of other settings."""
        checkpoint = load_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        if checkpoint is None:
            return None
        finished = checkpoint.finished or checkpoint.round >= self.settings.training.rounds
        if self.settings.run.on_existing == "new" or finished:
            self.earlier_run = ("a finished" if finished else "an earlier", checkpoint.round)
            log.info("%s holds %s run of %d rounds; it is set aside when the new run's first round starts",
                     self.run_dir, *self.earlier_run)
            return None
        check_resumable(checkpoint, fingerprint, self.run_dir)
        self.history = list(checkpoint.metrics)
        return checkpoint

    def claim(self, class_names: Sequence[str]) -> None:
        """Just before the first round: set aside the earlier run (if any) and start writing into the run folder."""
        earlier, self.earlier_run = self.earlier_run, None
        if earlier is not None and self.run_dir.is_dir():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.run_dir.with_name(f"{self.run_dir.name}.{stamp}")
            suffix = 1
            while aside.exists():
                suffix += 1
                aside = self.run_dir.with_name(f"{self.run_dir.name}.{stamp}-{suffix}")
            self.run_dir.rename(aside)
            log.info("%s holds %s run of %d rounds; moved it to %s and starting a new run", self.run_dir,
                     *earlier, aside)
        (self.run_dir / "models").mkdir(parents=True, exist_ok=True)
        write_labels(self.run_dir / "models", class_names)  # beside round_NNN.keras
        rewrite_metrics(self.metrics_path, self.history)
        (self.run_dir / "config.json").write_text(json.dumps(asdict(self.settings), indent=2))

    def save_round_model(self, model: "keras.Model", round_: int) -> None:
        model.save(self.run_dir / "models" / f"round_{round_:03d}.keras")

    def round_closed(self, metrics: RoundMetrics, weights: list[np.ndarray], fingerprint: str,
                     optimizer_state: dict[str, np.ndarray] | None = None) -> None:
        """Append the round's metrics and write the checkpoint after it (with the server optimizer's moments)."""
        append_metrics(self.metrics_path, metrics)
        self.history.append(metrics)
        save_checkpoint(self.run_dir, Checkpoint(metrics.round, weights, self.history, fingerprint,
                                                 optimizer_state=optimizer_state or {}))

    def finished(self, rounds: int, weights: list[np.ndarray], fingerprint: str,
                 optimizer_state: dict[str, np.ndarray] | None = None) -> None:
        """The run completed: a restart starts a new run (a stopped one can still be resumed)."""
        save_checkpoint(self.run_dir, Checkpoint(rounds, weights, self.history, fingerprint, finished=True,
                                                 optimizer_state=optimizer_state or {}))

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
