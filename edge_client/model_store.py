"""The folder where an inference-only device keeps its deployed model: written atomically, the last good one kept.

Layout: `model-<sha256 prefix>.tflite` files and `current.json` (the deployment, naming its file): the commit point."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from federation.errors import FedmqError
from federation.protocol.deployed_model import DeploymentError, DeploymentInfo

log = logging.getLogger(__name__)

CURRENT = "current.json"


class ModelStoreError(FedmqError, RuntimeError):
    """The model folder can't be read or written; the message names the file."""


@dataclass(frozen=True)
class StoredModel:
    info: DeploymentInfo
    path: Path


def model_file_name(info: DeploymentInfo) -> str:
    return f"model-{info.sha256[:16]}.tflite"


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, also after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is atomic anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelStore:
    """`stage()` writes a candidate model file; `commit()` makes it current; `discard()` removes a failed one."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(f"can't create the model folder {self.directory}: {exc}") from None

    def current(self) -> StoredModel | None:
        """The committed model, checked against its sha256; None if there is none (or it is damaged: logged)."""
        meta = self.directory / CURRENT
        if not meta.is_file():
            return None
        try:
            raw = json.loads(meta.read_text())
            info = DeploymentInfo.from_json(raw)
            path = self.directory / str(raw["file"])
            content = path.read_bytes()
        except (OSError, ValueError, KeyError, DeploymentError) as exc:
            log.error("the model folder %s is damaged (%s); waiting for a new deployment", self.directory, exc)
            return None
        if hashlib.sha256(content).hexdigest() != info.sha256:
            log.error("%s does not match the sha256 in %s; waiting for a new deployment", path, meta)
            return None
        return StoredModel(info, path)

    def stage(self, info: DeploymentInfo, content: bytes) -> Path:
        """Write the model file (atomically) without making it current."""
        path = self.directory / model_file_name(info)
        try:
            write_atomically(path, content)
        except OSError as exc:
            raise ModelStoreError(f"can't write {path}: {exc}") from None
        return path

    def commit(self, info: DeploymentInfo, path: Path) -> None:
        """Make the staged `path` the current model, then delete model files older than the previous one."""
        previous = self.current()
        meta = {**info.to_json(), "file": path.name}
        try:
            write_atomically(self.directory / CURRENT, json.dumps(meta, indent=2).encode())
        except OSError as exc:
            raise ModelStoreError(f"can't write {self.directory / CURRENT}: {exc}") from None
        keep = {path.name} | ({previous.path.name} if previous else set())
        for old in self.directory.glob("model-*.tflite"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def discard(self, path: Path) -> None:
        """Delete a staged model that failed to load, unless it is the current one."""
        current = self.current()
        if current is None or current.path.name != path.name:
            path.unlink(missing_ok=True)
