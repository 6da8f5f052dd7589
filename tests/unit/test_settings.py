"""Tests for federation.config.settings: the default TOML, validation errors that name the key, CLI overrides."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest

from federation.config.settings import (
    SECTIONS,
    TFLITE_VARIANTS,
    ConfigError,
    Settings,
    add_override_flags,
    load_settings,
    overrides_from_args,
    with_overrides,
)
from tests.support import REPO_ROOT

DEFAULT_TOML = REPO_ROOT / "config" / "default.toml"

# Keys where config/default.toml deliberately differs from the dataclass default: none today.
DELIBERATE_DIFFERENCES: dict[str, object] = {}


def write(tmp_path: Path, text: str, name: str = "fedmq.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# ---- the default file -------------------------------------------------------------------------------


def test_default_toml_equals_the_dataclass_defaults_field_by_field() -> None:
    loaded = load_settings(DEFAULT_TOML)
    defaults = Settings()
    differences = {}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(defaults, section)):
            key = f"{section}.{f.name}"
            file_value = getattr(getattr(loaded, section), f.name)
            default_value = getattr(getattr(defaults, section), f.name)
            if key in DELIBERATE_DIFFERENCES:
                assert file_value == DELIBERATE_DIFFERENCES[key], key
            elif file_value != default_value or type(file_value) is not type(default_value):
                differences[key] = (file_value, default_value)
    assert differences == {}, f"config/default.toml differs from the dataclasses: {differences}"


def test_default_toml_lists_every_key_and_nothing_else() -> None:
    with open(DEFAULT_TOML, "rb") as fh:
        raw = tomllib.load(fh)
    assert set(raw) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        assert set(raw[section]) == {f.name for f in dataclasses.fields(cls)}, section


def test_no_path_gives_the_defaults() -> None:
    assert load_settings(None) == Settings()
    assert load_settings(None).run_dir == Path("runs") / "demo"


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    s = load_text(tmp_path, "[training]\nrounds = 9\n[quorum]\nfraction = 1\n")
    assert s.training.rounds == 9
    assert s.quorum.fraction == 1.0 and isinstance(s.quorum.fraction, float)   # int promoted to float
    assert s.training.batch_size == Settings().training.batch_size
    assert s.broker == Settings().broker


def test_valid_non_default_values(tmp_path: Path) -> None:
    s = load_text(tmp_path, """
[run]
name = "exp_2024-01.a"
[broker]
port = 65535
mqtt_version = "5"
topic_prefix = "lab/fedmq"
[model]
image_size = [32, 48]
[export]
tflite = ["float32", "dynamic", "int8"]
[quorum]
on_no_quorum = "stop"
fraction = 0.0
""")
    assert s.run.name == "exp_2024-01.a" and s.broker.port == 65535 and s.broker.mqtt_version == "5"
    assert s.model.image_size == [32, 48]
    assert s.export.tflite == list(TFLITE_VARIANTS)
    assert s.quorum.on_no_quorum == "stop" and s.quorum.fraction == 0.0


# ---- errors -----------------------------------------------------------------------------------------


def test_unknown_section_suggests_the_right_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[trainig]\nrounds = 3\n")
    assert "[trainig]" in message and "did you mean 'training'" in message


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[training]\nrouns = 3\n")
    assert "'rouns'" in message and "did you mean 'rounds'" in message and "[training]" in message


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[broker]\nzzzzzz = 1\n")
    assert "'zzzzzz'" in message and "did you mean" not in message


@pytest.mark.parametrize("line, section, key", [
    ('rounds = "5"', "training", "rounds"),
    ("rounds = true", "training", "rounds"),
    ("rounds = 2.5", "training", "rounds"),
    ("rounds = 5.0", "training", "rounds"),
    ("learning_rate = true", "training", "learning_rate"),
    ('learning_rate = "0.1"', "training", "learning_rate"),
    ("optimizer = 1", "training", "optimizer"),
    ("port = 1883.0", "broker", "port"),
    ('port = "1883"', "broker", "port"),
    ('mqtt_version = 5', "broker", "mqtt_version"),
    ('host = ["a"]', "broker", "host"),
    ('image_size = [28.0, 28.0]', "model", "image_size"),
    ('image_size = "28x28"', "model", "image_size"),
    ('tflite = "float32"', "export", "tflite"),
    ('tflite = [1]', "export", "tflite"),
])
def test_wrong_type(tmp_path: Path, line: str, section: str, key: str) -> None:
    message = config_error(tmp_path, f"[{section}]\n{line}\n")
    assert f"[{section}] {key}" in message
    assert "must be" in message


@pytest.mark.parametrize("section, line, key", [
    ("broker", "port = 0", "port"),
    ("broker", "port = 65536", "port"),
    ("broker", "keepalive_s = 4", "keepalive_s"),
    ("quorum", "fraction = 1.5", "fraction"),
    ("quorum", "fraction = -0.1", "fraction"),
    ("quorum", "min_clients = 0", "min_clients"),
    ("quorum", "round_deadline_s = 0.0", "round_deadline_s"),
    ("training", "rounds = 0", "rounds"),
    ("training", "learning_rate = 0.0", "learning_rate"),
    ("training", "batch_size = -1", "batch_size"),
    ("model", "seed = -1", "seed"),
])
def test_out_of_range(tmp_path: Path, section: str, line: str, key: str) -> None:
    message = config_error(tmp_path, f"[{section}]\n{line}\n")
    value = line.split(" = ")[1]
    assert f"[{section}] {key} = {value} is out of range" in message


@pytest.mark.parametrize("section, line, key", [
    ("quorum", "fraction = nan", "fraction"),
    ("quorum", "round_deadline_s = nan", "round_deadline_s"),
    ("training", "learning_rate = nan", "learning_rate"),
])
def test_nan_is_rejected(tmp_path: Path, section: str, line: str, key: str) -> None:
    message = config_error(tmp_path, f"[{section}]\n{line}\n")
    assert f"[{section}] {key}" in message and "nan" in message


@pytest.mark.parametrize("section, line, value", [
    ("training", 'optimizer = "rmsprop"', "'rmsprop'"),
    ("broker", 'mqtt_version = "3.1"', "'3.1'"),
    ("quorum", 'on_no_quorum = "retry"', "'retry'"),
    ("aggregation", 'rule = "fedprox"', "'fedprox'"),
])
def test_bad_choice(tmp_path: Path, section: str, line: str, value: str) -> None:
    message = config_error(tmp_path, f"[{section}]\n{line}\n")
    key = line.split(" = ")[0]
    assert f"[{section}] {key}" in message and value in message and "is not one of" in message


def test_bad_tflite_variant(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[export]\ntflite = ["float32", "int4"]\n')
    assert "tflite" in message and "'int4'" in message


@pytest.mark.parametrize("name", ["a/b", "+", "#", "", "has space", "-leading", "x" * 65])
def test_run_name_unusable_in_topics(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f'[run]\nname = "{name}"\n')
    assert "run id" in message and repr(name) in message


def test_run_name_with_a_trailing_newline(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[run]\nname = "demo\\n"\n')   # TOML "demo\n"
    assert "run id 'demo\\n'" in message


def test_bad_topic_prefix(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[broker]\ntopic_prefix = "fed/+/x"\n')
    assert "'+'" in message


def test_image_size_needs_two_values(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[model]\nimage_size = [28]\n")
    assert "image_size" in message and "[28]" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "training = 5\n")
    assert "[training] must be a table" in message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[training\nrounds = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert str(tmp_path) in str(info.value)


# ---- overrides --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_override_flags(p)
    return p


def test_cli_overrides_apply_on_top_of_the_file() -> None:
    args = parser().parse_args(["--training.rounds", "3", "--export.tflite", "float32", "int8",
                                "--quorum.fraction", "0.5"])
    overrides = overrides_from_args(args)
    assert overrides == {"training.rounds": 3, "export.tflite": ["float32", "int8"], "quorum.fraction": 0.5}
    s = load_settings(DEFAULT_TOML, overrides)
    assert s.training.rounds == 3
    assert s.export.tflite == ["float32", "int8"]
    assert s.quorum.fraction == 0.5
    assert s.training.batch_size == 32                           # untouched keys keep the file's values


def test_no_flags_means_no_overrides() -> None:
    assert overrides_from_args(parser().parse_args([])) == {}


def test_every_setting_has_a_flag() -> None:
    p = parser()
    flags = {opt for action in p._actions for opt in action.option_strings}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in flags


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nrounds = 9\n")
    assert load_settings(path, {"training.rounds": 4}).training.rounds == 4


@pytest.mark.parametrize("argv, key", [
    (["--training.rounds", "0"], "rounds"),
    (["--training.optimizer", "rmsprop"], "optimizer"),
    (["--quorum.fraction", "2"], "fraction"),
    (["--quorum.fraction", "nan"], "fraction"),
    (["--export.tflite", "int4"], "int4"),
    (["--run.name", "a/b"], "a/b"),
    (["--broker.port", "70000"], "port"),
])
def test_bad_override_value_raises_config_error(argv: list[str], key: str) -> None:
    overrides = overrides_from_args(parser().parse_args(argv))
    with pytest.raises(ConfigError, match=key):
        load_settings(DEFAULT_TOML, overrides)


def test_override_of_unknown_key_or_section() -> None:
    with pytest.raises(ConfigError, match="'rouns'.*did you mean 'rounds'"):
        load_settings(None, {"training.rouns": 3})
    with pytest.raises(ConfigError, match=r"\[trainig\].*did you mean 'training'"):
        load_settings(None, {"trainig.rounds": 3})


def test_with_overrides_replaces_fields() -> None:
    s = with_overrides(Settings(), training={"rounds": 2}, quorum={"min_clients": 1})
    assert s.training.rounds == 2 and s.quorum.min_clients == 1
    assert s.training.batch_size == Settings().training.batch_size


# ---- the coordinator's command line -----------------------------------------------------------------
