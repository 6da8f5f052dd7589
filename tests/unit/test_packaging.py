"""Packaging: pyproject.toml's version is the software's, every command answers --version, and the `fedmq`
command reaches every role's `python -m` entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

import pytest

from federation.cli import fedmq
from federation.cli.version import VERSION_TEXT
from federation.protocol.version import PROTOCOL_VERSION, SOFTWARE_VERSION
from tests.support import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def test_the_package_version_is_the_software_version() -> None:
    assert _pyproject()["project"]["version"] == SOFTWARE_VERSION
    assert VERSION_TEXT == f"fedmq {SOFTWARE_VERSION} (wire protocol {PROTOCOL_VERSION})"


def test_the_console_command_is_fedmq() -> None:
    assert _pyproject()["project"]["scripts"] == {"fedmq": "federation.cli.fedmq:main"}


def _main(module: str) -> Callable[[list[str]], int]:
    return import_module(module).main


@pytest.mark.parametrize("module, argv", [
    ("coordinator.__main__", ["--version"]),
    ("coordinator.__main__", ["run", "--version"]),
    ("coordinator.__main__", ["evaluate", "--version"]),
    ("coordinator.__main__", ["baseline", "--version"]),
    ("coordinator.__main__", ["report", "--version"]),
    ("coordinator.__main__", ["dashboard", "--version"]),
    ("edge_client.__main__", ["--version"]),
    ("edge_client.__main__", ["serve", "--version"]),
    ("edge_client.__main__", ["predict", "--version"]),
    ("broker.__main__", ["--version"]),
    ("broker.__main__", ["--secure", "--version"]),
    ("broker.__main__", ["init-secure", "--version"]),
    ("broker.__main__", ["add-device", "--version"]),
    ("broker.__main__", ["add-coordinator", "--version"]),
    ("broker.__main__", ["revoke-device", "--version"]),
    ("broker.__main__", ["list-devices", "--version"]),
    ("demo.__main__", ["--version"]),
    ("federation.cli.fedmq", ["coordinator", "--version"]),
    ("federation.cli.fedmq", ["client", "--version"]),
    ("federation.cli.fedmq", ["serve", "--version"]),
    ("federation.cli.fedmq", ["predict", "--version"]),
    ("federation.cli.fedmq", ["broker", "--version"]),
    ("federation.cli.fedmq", ["demo", "--version"]),
])
def test_every_command_answers_version(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _main(module)(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == VERSION_TEXT


def test_fedmq_alone_prints_the_version_and_the_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmq.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == VERSION_TEXT
    assert fedmq.main([]) == 2
    usage = capsys.readouterr().err
    assert all(command in usage for command in fedmq.COMMANDS)
    assert fedmq.main(["nonsense"]) == 2


def test_every_fedmq_role_is_a_python_m_entry_point() -> None:
    for command, (module, _prefix) in fedmq.COMMANDS.items():
        assert module.endswith(".__main__"), command
        assert callable(getattr(import_module(module), "main")), module
