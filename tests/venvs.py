"""Cached virtual environments for tests that need another set of packages: no TensorFlow, or tflite-runtime 2.14.

Built once per requirement set under $FEDMQ_VENV_CACHE (default ~/.cache/fedmq/venvs) and reused; pip needs PyPI."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from tests.support import REPO_ROOT

EDGE_REQUIREMENTS = REPO_ROOT / "requirements" / "serve.txt"
# A device stuck on tflite-runtime 2.14: its wheels exist for Python 3.9 to 3.11 only, and need numpy<2.
TFLITE_RUNTIME_REQUIREMENTS = ["tflite-runtime==2.14.0", "numpy<2", "paho-mqtt>=2.1,<3", "msgpack>=1.0,<2",
                               "Pillow>=10"]
READY = ".fedmq-ready"


class VenvError(RuntimeError):
    """The virtual environment could not be built; the message holds pip's output."""


def cache_dir() -> Path:
    return Path(os.environ.get("FEDMQ_VENV_CACHE") or Path.home() / ".cache" / "fedmq" / "venvs")


def base_python() -> str:
    """The interpreter behind the running (virtual) environment, to build sibling environments from."""
    return getattr(sys, "_base_executable", None) or sys.executable


def cached_venv(name: str, requirements: list[str], timeout_s: float = 900) -> Path:
    """The python of a virtual environment holding exactly `requirements`, built on first use (under a lock)."""
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:12]
    root = cache_dir() / f"{name}-{key}"
    python = root / "bin" / "python"
    if (root / READY).is_file():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building the same one
        if (root / READY).is_file():
            return python
        shutil.rmtree(root, ignore_errors=True)
        _run([base_python(), "-m", "venv", str(root)], timeout_s)
        req_file = root / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req_file)],
             timeout_s)
        (root / READY).write_text("\n".join(requirements) + "\n")
    return python


def edge_requirements() -> list[str]:
    """requirements/serve.txt's lines that apply to this Python (a `; python_version < "3.11"` line does not on 3.11)."""
    from packaging.requirements import Requirement

    lines = [line.strip() for line in EDGE_REQUIREMENTS.read_text().splitlines()]
    wanted = [line for line in lines if line and not line.startswith("#")]
    return [line for line in wanted if Requirement(line).marker is None or Requirement(line).marker.evaluate()]


def _run(argv: list[str], timeout_s: float) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VenvError(f"{' '.join(argv)} ran longer than {timeout_s:g} s") from None
    if out.returncode != 0:
        raise VenvError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


if __name__ == "__main__":  # pre-build both, e.g. in CI before the tests: python -m tests.venvs
    print(cached_venv("edge", edge_requirements()))
    print(cached_venv("tflite-runtime-2.14", TFLITE_RUNTIME_REQUIREMENTS))
