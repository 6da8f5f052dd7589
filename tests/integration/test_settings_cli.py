"""Tests for federation.config.settings: the default TOML, validation errors that name the key, CLI overrides.

The tests of test_settings.py that start processes or import TensorFlow (the unit tier does neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT

DEFAULT_TOML = REPO_ROOT / "config" / "default.toml"


def write(tmp_path: Path, text: str, name: str = "fedmq.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_coordinator_cli_exits_2_naming_the_bad_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nrouns = 3\n")
    proc = subprocess.run([sys.executable, "-m", "coordinator", "--config", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "config error" in proc.stderr and "'rouns'" in proc.stderr and "did you mean 'rounds'" in proc.stderr


def test_coordinator_cli_exits_2_on_a_bad_override() -> None:
    proc = subprocess.run([sys.executable, "-m", "coordinator", "--config", str(DEFAULT_TOML),
                           "--training.optimizer", "rmsprop"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "optimizer" in proc.stderr and "'rmsprop'" in proc.stderr
