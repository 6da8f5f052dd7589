"""Tests for the coordinator's Python API that need no broker: settings built in code are validated like a TOML
file, and every form run_coordinator takes resolves to the same Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

import coordinator
from coordinator.api import resolve_settings
from federation.config.settings import ConfigError, Settings, load_settings, settings_from_dict


def test_settings_from_a_dict_are_validated_like_a_file(tmp_path: Path) -> None:
    s = settings_from_dict({"run": {"name": "py", "output_dir": tmp_path}, "training": {"rounds": 3},
                            "export": {"tflite": ("float32", "int8")}}, {"quorum.min_clients": 1})
    assert (s.run.name, s.run.output_dir, s.training.rounds, s.quorum.min_clients) == ("py", str(tmp_path), 3, 1)
    assert s.export.tflite == ["float32", "int8"] and s.run_dir == tmp_path / "py"
    assert settings_from_dict() == Settings() == load_settings(None)
    for bad, pattern in [({"trainig": {}}, r"unknown section \[trainig\] \(did you mean 'training'\?\)"),
                         ({"training": {"rounds": "3"}}, r"\[training\] rounds must be int, got str"),
                         ({"training": {"rounds": 0}}, r"\[training\] rounds = 0 is out of range"),
                         ({"training": {"epochs": 1}}, r"\[training\] unknown key 'epochs'"),
                         ({"run": {"name": "a/b"}}, "run")]:
        with pytest.raises(ConfigError, match=pattern):
            settings_from_dict(bad)
    with pytest.raises(ConfigError, match="settings must be a dict of sections, got list"):
        settings_from_dict([("run", {})])  # type: ignore[arg-type]


def test_every_form_resolves_to_the_same_settings(tmp_path: Path) -> None:
    toml = tmp_path / "fedmq.toml"
    toml.write_text('[run]\nname = "py"\n[training]\nrounds = 3\n')
    from_dict = resolve_settings({"run": {"name": "py"}, "training": {"rounds": 3}})
    assert resolve_settings(toml) == resolve_settings(str(toml)) == from_dict
    assert resolve_settings(from_dict) is from_dict
    assert resolve_settings(from_dict, {"training.rounds": 4}).training.rounds == 4
    assert resolve_settings(None, {"run.name": "py", "training.rounds": 3}) == from_dict
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(tmp_path / "missing.toml")


def test_the_package_exports_the_api_lazily() -> None:
    from coordinator.api import run_coordinator

    assert coordinator.run_coordinator is run_coordinator and coordinator.settings_from_dict is settings_from_dict
    assert coordinator.Settings is Settings and set(coordinator.__all__) >= {"run_coordinator", "RunResult"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        getattr(coordinator, "nothing")
