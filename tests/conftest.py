"""Shared fixtures (a real Mosquitto on a free port, a local federation of real processes) and the test tiers.

Tiers, by directory: tests/unit -> `unit`, tests/integration -> `integration`, and the dashboard's Chromium test
also `browser` (pytest -m unit, -m "integration and not browser", ...). A unit test must stay in process and
light: one that starts a subprocess or imports TensorFlow or Keras fails, so the tier stays under a minute."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# No per-example deadline: a loaded machine once took 417 ms for a 200 ms one (a broker address round trip), a
# timing, not a property. Each property test still sets its number of examples.
settings.register_profile("fedmq", deadline=None)
settings.load_profile("fedmq")

from broker import MosquittoProcess
from demo.local_federation import LocalFederation
from tests.support import REPO_ROOT

BROWSER_TESTS = {"tests/integration/test_dashboard.py"}
HEAVY_MODULES = ("tensorflow", "keras", "tf_keras")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        if rel.startswith("tests/unit/"):
            item.add_marker(pytest.mark.unit)
        elif rel.startswith("tests/integration/"):
            item.add_marker(pytest.mark.integration)
        if rel in BROWSER_TESTS:
            item.add_marker(pytest.mark.browser)


class _NoSubprocess(subprocess.Popen):
    def __init__(self, args: object, *rest: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test started a process ({args!r}): move it to tests/integration")


def _no_process(*args: object, **kwargs: object) -> None:
    raise AssertionError("a unit test started a process: move it to tests/integration")


@pytest.fixture(autouse=True)
def _unit_tier_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In the unit tier: no subprocess (Popen, fork, spawn, system), and no TensorFlow or Keras import."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    monkeypatch.setattr(subprocess, "Popen", _NoSubprocess)
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _no_process)
    before = {name for name in HEAVY_MODULES if name in sys.modules}
    yield
    imported = sorted(name for name in HEAVY_MODULES if name in sys.modules and name not in before)
    if imported:
        pytest.fail(f"a unit test imported {', '.join(imported)}: keep it in process and light, or move it to "
                    "tests/integration", pytrace=False)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(workdir=tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A LocalFederation whose broker is started; every process is stopped at the end."""
    fed = LocalFederation(tmp_path / "fed", run_name="it")
    try:
        fed.start_broker()
        yield fed
    finally:
        fed.stop()
