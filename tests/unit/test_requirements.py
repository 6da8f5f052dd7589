"""The requirements files per role: one pin per package across all of them, nothing a role doesn't need, and
requirements.txt (development and CI) holding every role."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO_ROOT

ROLES = ("train", "serve", "coordinator", "secure-broker", "dev")
TEST_AND_COORDINATOR_ONLY = {"playwright", "dp-accounting", "amqtt", "matplotlib", "pytest", "hypothesis", "ruff",
                             "mypy", "import-linter"}


def _pins(path: Path, seen: set[Path] | None = None) -> dict[str, set[str]]:
    """package -> the requirement lines naming it, following -r includes."""
    seen = set() if seen is None else seen
    seen.add(path)
    pins: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            for name, lines in _pins(path.parent / line[3:].strip(), seen).items():
                pins.setdefault(name, set()).update(lines)
            continue
        name = re.match(r"[A-Za-z0-9_.-]*", line).group(0).lower()  # a match, maybe empty, always
        assert name, f"{path.name}: no package name in {line!r}"
        pins.setdefault(name, set()).add(line)
    return pins


def _versions(lines: set[str]) -> set[str]:
    return {line.split("==", 1)[1].split(";")[0].strip() for line in lines}


def test_every_package_has_one_exact_version_across_all_roles() -> None:
    everything = _pins(REPO_ROOT / "requirements.txt")
    for name, lines in everything.items():
        assert all("==" in line for line in lines), f"{name} is not pinned exactly: {lines}"
        assert len(_versions(lines)) == 1, f"{name} has two versions: {lines}"


def test_requirements_txt_holds_every_role() -> None:
    everything = _pins(REPO_ROOT / "requirements.txt")
    for role in ROLES:
        missing = set(_pins(REPO_ROOT / "requirements" / f"{role}.txt")) - set(everything)
        assert not missing, f"requirements.txt lacks {role}'s {sorted(missing)}"


def test_a_training_device_installs_no_test_or_coordinator_wheels() -> None:
    train = set(_pins(REPO_ROOT / "requirements" / "train.txt"))
    assert {"tensorflow", "tensorflow-cpu", "keras"} <= train
    assert not train & TEST_AND_COORDINATOR_ONLY, sorted(train & TEST_AND_COORDINATOR_ONLY)


def test_an_inference_only_device_installs_no_tensorflow() -> None:
    serve_path = REPO_ROOT / "requirements" / "serve.txt"
    serve = set(_pins(serve_path))
    assert "ai-edge-litert" in serve and "tomli" in serve
    assert not serve & ({"tensorflow", "tensorflow-cpu", "keras", "rich"} | TEST_AND_COORDINATOR_ONLY)
    includes = [line for line in serve_path.read_text().splitlines() if line.startswith("-")]
    assert not includes, "tests/venvs.py builds a venv from serve.txt's own lines: no -r or options there"
