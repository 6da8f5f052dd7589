"""The coordinator's checkpoint: global weights, last completed round, metrics so far, and the hash
of the settings and model they belong to; written atomically after every round."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from federation.errors import FedmqError
from coordinator.metrics import RoundMetrics
from federation.protocol.codec import TensorSpec
from federation.config.settings import DataSettings, Settings

CHECKPOINT_FILE = "checkpoint.npz"
_OPTIMIZER_PREFIX = "optimizer/"   # array names of the server optimizer's state (weights are w0, w1, ...)


class CheckpointMismatchError(FedmqError, RuntimeError):
    """A checkpoint exists for this run but was made with other settings or another model."""


@dataclass
class Checkpoint:
    round: int
    weights: list[np.ndarray]
    metrics: list[RoundMetrics]
    fingerprint: str
    finished: bool = False   # the run completed: a restart starts a new run instead of continuing it
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)   # the server optimizer's moments


def run_fingerprint(settings: Settings, specs: list[TensorSpec], architecture: str = "") -> str:
    """Hash of what a resumed run must share with the interrupted one: model, data, training rule.

    Broker address, output folder, round count, deadlines, export options and where the dataset's files live
    (`data_dir`: the data is the same wherever it sits) may change. `architecture` (the sha256 of the Keras JSON
    of a model from a file or a builder) ties the run to that architecture: an edited model file refuses the
    resume. Unset model sources are left out, so that runs from before they existed still resume."""
    relevant: dict[str, object] = {
        "model": {k: v for k, v in asdict(settings.model).items()
                  if k != "data_dir" and not (k in ("path", "builder") and not v)},
        "training": {k: v for k, v in asdict(settings.training).items() if k != "rounds"},
        "aggregation": {k: v for k, v in asdict(settings.aggregation).items() if k != "report_norms"},  # a report
        "server_optimizer": asdict(settings.server_optimizer),
        "weights": [(s.name, s.dtype, list(s.shape)) for s in specs],
    }
    if settings.data != DataSettings():  # tables and series: which columns, scaling and windows (not the default)
        relevant["data"] = asdict(settings.data)
    if architecture:
        relevant["architecture"] = architecture
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint next to the run's outputs: to a temporary file, fsync, then rename."""
    meta = {"round": checkpoint.round, "fingerprint": checkpoint.fingerprint, "finished": checkpoint.finished,
            "metrics": [asdict(m) for m in checkpoint.metrics]}
    arrays = {f"w{i}": w for i, w in enumerate(checkpoint.weights)}
    arrays.update({f"{_OPTIMIZER_PREFIX}{name}": value for name, value in checkpoint.optimizer_state.items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)  # numbers only: a checkpoint never holds objects
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        count = sum(1 for k in data.files if k.startswith("w"))
        weights = [data[f"w{i}"] for i in range(count)]
        optimizer_state = {k[len(_OPTIMIZER_PREFIX):]: data[k] for k in data.files if k.startswith(_OPTIMIZER_PREFIX)}
    return Checkpoint(meta["round"], weights, [RoundMetrics.from_row(m) for m in meta["metrics"]], meta["fingerprint"],
                      bool(meta.get("finished", False)), optimizer_state)


def check_resumable(checkpoint: Checkpoint, fingerprint: str, run_dir: Path) -> None:
    if checkpoint.fingerprint != fingerprint:
        raise CheckpointMismatchError(
            f"{run_dir / CHECKPOINT_FILE} was written by a run with different model, data or training settings "
            f"(fingerprint {checkpoint.fingerprint[:12]} vs {fingerprint[:12]} now). Refusing to resume it: use "
            "the original settings, another run.name, or --run.on_existing new to start over")
