"""Unit tests for the broker package's config rendering and binary lookup.

No broker is started here; see tests/integration/test_broker.py for that.
"""

from __future__ import annotations

import argparse
import resource
import stat
from pathlib import Path

import pytest

from broker import mosquitto_process
from broker.__main__ import ConfigError, broker_settings, main, resolve_options
from broker.mosquitto_process import DEFAULT_CONFIG, find_mosquitto, render_config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def active_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# -- render_config --------------------------------------------------------------


def test_render_rewrites_listener_port_without_bind(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "allow_anonymous true\nlistener 1883\npersistence false\n")
    rendered = render_config(template, 18830, None)
    assert active_lines(rendered) == ["allow_anonymous true", "listener 18830", "persistence false"]


def test_render_appends_bind_address_to_listener(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "listener 1883\n")
    assert active_lines(render_config(template, 5000, "127.0.0.1")) == ["listener 5000 127.0.0.1"]


def test_render_replaces_an_existing_bind_address(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "listener 1883 0.0.0.0\n")
    assert active_lines(render_config(template, 5000, "::1")) == ["listener 5000 ::1"]


def test_render_appends_extra_lines_after_listener(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "listener 1883\nlog_dest stderr\n")
    rendered = render_config(template, 5000, None, ["max_inflight_messages 5", "max_keepalive 30"])
    assert active_lines(rendered) == [
        "listener 5000", "log_dest stderr", "max_inflight_messages 5", "max_keepalive 30",
    ]
    assert rendered.endswith("\n")


def test_render_leaves_comments_and_later_listeners_alone(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "# listener 1883 is the default\nlistener 1883\nlistener 9001\nprotocol websockets\n")
    rendered = render_config(template, 5000, None)
    assert rendered.splitlines() == [
        "# listener 1883 is the default", "listener 5000", "listener 9001", "protocol websockets",
    ]


def test_render_adds_listener_when_template_has_none(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "allow_anonymous true\n")
    assert active_lines(render_config(template, 5000, "127.0.0.1")) == ["allow_anonymous true", "listener 5000 127.0.0.1"]


def test_project_config_renders_with_expected_settings() -> None:
    lines = active_lines(render_config(DEFAULT_CONFIG, 24567, "127.0.0.1"))
    assert lines.count("listener 24567 127.0.0.1") == 1
    assert not any(line.startswith("listener 1883") for line in lines)
    for setting in (
        "allow_anonymous true", "persistence false", "max_queued_messages 100000", "message_size_limit 0",
        "log_dest stderr", "per_listener_settings false", "log_type error", "log_type information",
    ):
        assert setting in lines
    assert lines[0] == "per_listener_settings false"


WS_TEMPLATE = "per_listener_settings false\nlistener 9001\nprotocol websockets\n\nlistener 1883\nallow_anonymous true\n"


def test_render_skips_a_leading_websockets_listener_for_the_mqtt_port(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", WS_TEMPLATE)
    assert active_lines(render_config(template, 5000, "127.0.0.1")) == [
        "per_listener_settings false", "listener 9001", "protocol websockets", "listener 5000 127.0.0.1",
        "allow_anonymous true",
    ]


def test_render_sets_the_websockets_port_and_bind(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", WS_TEMPLATE)
    rendered = render_config(template, 5000, "127.0.0.1", ["max_keepalive 30"], ws_port=5001)
    assert active_lines(rendered) == [
        "per_listener_settings false", "listener 5001 127.0.0.1", "protocol websockets", "socket_domain ipv4",
        "listener 5000 127.0.0.1", "allow_anonymous true", "max_keepalive 30",
    ]


def test_render_drops_the_websockets_listener_for_ws_port_0(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", WS_TEMPLATE)
    assert active_lines(render_config(template, 5000, None, ws_port=0)) == [
        "per_listener_settings false", "listener 5000", "allow_anonymous true",
    ]


def test_render_adds_a_websockets_listener_before_the_mqtt_one(tmp_path: Path) -> None:
    template = write(tmp_path / "t.conf", "listener 1883\nallow_anonymous true\n")
    rendered = render_config(template, 5000, None, ["cafile x"], ws_port=5001)
    assert active_lines(rendered) == ["listener 5001", "protocol websockets", "listener 5000", "allow_anonymous true",
                                      "cafile x"], "extra lines (listener options) still follow the MQTT listener"


def test_project_config_has_a_websockets_listener_on_9001() -> None:
    lines = active_lines(render_config(DEFAULT_CONFIG, 24567, "127.0.0.1"))
    assert lines[lines.index("listener 9001") + 1] == "protocol websockets"
    with_ws = active_lines(render_config(DEFAULT_CONFIG, 24567, "127.0.0.1", ws_port=24568))
    assert "listener 24568 127.0.0.1" in with_ws and "listener 9001" not in with_ws
    without = active_lines(render_config(DEFAULT_CONFIG, 24567, "127.0.0.1", ws_port=0))
    assert "protocol websockets" not in without and not any(line.startswith("listener 9001") for line in without)


# -- find_mosquitto ---------------------------------------------------------------


def test_find_mosquitto_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_executable(tmp_path / "mosquitto")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_mosquitto() == str(fake)


def test_find_mosquitto_falls_back_to_sbin_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    fallback = make_executable(tmp_path / "sbin-mosquitto")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(mosquitto_process, "FALLBACK_PATHS", (str(tmp_path / "missing"), str(fallback)))
    assert find_mosquitto() == str(fallback)


def test_find_mosquitto_ignores_non_executable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "mosquitto", "not a program")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto_process, "FALLBACK_PATHS", (str(tmp_path / "mosquitto"),))
    assert find_mosquitto() is None


def test_find_mosquitto_returns_none_when_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto_process, "FALLBACK_PATHS", ())
    assert find_mosquitto() is None


# -- CLI port / backend resolution -----------------------------------------------------


def cli_args(config: Path | None, port: int | None = None, embedded: bool = False) -> argparse.Namespace:
    return argparse.Namespace(config=config, port=port, bind="0.0.0.0", embedded=embedded)


def test_the_broker_reads_the_fleet_settings_through_the_one_settings_loader(tmp_path: Path) -> None:
    """Issue 11: the broker parsed the TOML itself, found through REPO_ROOT; now load_settings reads it."""
    toml = write(tmp_path / "c.toml", "[training]\nrounds = 3\n\n[broker]\nport = 2883\nhost = 'x'\n")
    assert broker_settings(toml).port == 2883
    assert broker_settings(None).port == 1883 and broker_settings(None).ws_port == 9001, "no file: the defaults"
    assert broker_settings(write(tmp_path / "d.toml", "[training]\nrounds = 3\n")).port == 1883


def test_a_missing_or_unknown_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        broker_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="unknown section"):
        broker_settings(write(tmp_path / "c.toml", "[coordinator]\nport = 1\n"))


@pytest.mark.parametrize("value", ["'1883'", "0", "70000", "true"])
def test_bad_ports_are_refused_by_the_settings_loader(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        broker_settings(write(tmp_path / "c.toml", f"[broker]\nport = {value}\n"))


def test_cli_port_overrides_toml_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: "/usr/sbin/mosquitto")
    toml = write(tmp_path / "c.toml", "[broker]\nport = 2883\n")
    assert resolve_options(cli_args(toml)).port == 2883
    assert resolve_options(cli_args(toml, port=4000)).port == 4000
    assert resolve_options(cli_args(None)).port == 1883


def test_backend_is_embedded_when_asked_or_mosquitto_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: "/usr/sbin/mosquitto")
    assert resolve_options(cli_args(None)).mosquitto == "/usr/sbin/mosquitto"
    asked = resolve_options(cli_args(None, embedded=True))
    assert asked.mosquitto is None and asked.embedded_requested
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: None)
    missing = resolve_options(cli_args(None))
    assert missing.mosquitto is None and not missing.embedded_requested


def test_main_falls_back_to_embedded_when_mosquitto_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    started: list[tuple[int, str]] = []
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: None)
    monkeypatch.setattr("broker.__main__.bind_problem", lambda bind, port: None)
    monkeypatch.setattr("broker.__main__.run_embedded", lambda port, bind: started.append((port, bind)) or 0)
    with caplog.at_level("INFO"):
        assert main(["--port", "4321"]) == 0
    assert started == [(4321, "0.0.0.0")]
    assert "mosquitto not found (install with: sudo apt-get install mosquitto)" in caplog.text


# -- the websockets port (dashboard) ---------------------------------------------------------------------


def test_ws_port_from_the_settings_allows_0_and_checks_the_range(tmp_path: Path) -> None:
    assert broker_settings(write(tmp_path / "a.toml", "[broker]\nws_port = 0\n")).ws_port == 0
    assert broker_settings(write(tmp_path / "b.toml", "[broker]\nport = 1884\n")).ws_port == 9001
    with pytest.raises(ConfigError, match=r"\[broker\] ws_port"):
        broker_settings(write(tmp_path / "c.toml", "[broker]\nws_port = 70000\n"))


def test_ws_port_resolution_cli_then_toml_then_9001(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: "/usr/sbin/mosquitto")
    toml = write(tmp_path / "c.toml", "[broker]\nws_port = 9005\n")
    assert resolve_options(cli_args(None)).ws_port == 9001
    from_toml = resolve_options(cli_args(toml))
    assert from_toml.ws_port == 9005 and not from_toml.ws_port_requested
    args = cli_args(toml)
    args.ws_port = 0
    assert resolve_options(args).ws_port == 0 and resolve_options(args).ws_port_requested


def test_busy_default_ws_port_warns_but_an_asked_for_one_stops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr("broker.__main__.find_mosquitto", lambda: "/usr/sbin/mosquitto")
    monkeypatch.setattr("broker.__main__.bind_problem",
                        lambda bind, port: f"port {port} on {bind} is already in use" if port == 9001 else None)
    monkeypatch.setattr("broker.__main__.run_mosquitto_foreground",
                        lambda binary, port, bind, ws_port=0: started.append((port, ws_port)) or 0)
    with caplog.at_level("WARNING"):
        assert main(["--port", "4321"]) == 0
    assert started == [(4321, 0)]
    assert "starting without the MQTT-over-WebSockets listener" in caplog.text
    assert main(["--port", "4321", "--ws-port", "9001"]) == 2
    assert "--ws-port: port 9001 on 0.0.0.0 is already in use" in caplog.text
    assert main(["--port", "4321", "--ws-port", "9002"]) == 0 and started[-1] == (4321, 9002)


def test_render_makes_libwebsockets_honour_an_ipv4_bind_address(tmp_path: Path) -> None:
    """Mosquitto 2.0.11 (libwebsockets) opened `listener 9001 127.0.0.1` + `protocol websockets` on every interface,
    IPv6 included; `socket_domain ipv4` makes it bind the address (tests/integration/test_broker_websockets.py)."""
    template = write(tmp_path / "t.conf", "listener 9001\nprotocol websockets\nlistener 1883\n")
    assert active_lines(render_config(template, 5000, "127.0.0.1", ws_port=5001)) == [
        "listener 5001 127.0.0.1", "protocol websockets", "socket_domain ipv4", "listener 5000 127.0.0.1"]
    assert active_lines(render_config(template, 5000, "::1", ws_port=5001))[:3] == [
        "listener 5001 ::1", "protocol websockets", "socket_domain ipv6"]
    assert active_lines(render_config(template, 5000, None, ws_port=5001))[:3] == [
        "listener 5001", "protocol websockets", "listener 5000"], "no bind address: every interface, as asked"


def test_render_resolves_a_host_name_for_the_websockets_listener(tmp_path: Path) -> None:
    """libwebsockets silently opens no socket for a host name (`listener 9001 localhost`): use its address."""
    template = write(tmp_path / "t.conf", "listener 9001\nprotocol websockets\nlistener 1883\n")
    lines = active_lines(render_config(template, 5000, "localhost", ws_port=5001))
    assert lines[0] in ("listener 5001 127.0.0.1", "listener 5001 ::1") and lines[2].startswith("socket_domain ")
    assert lines[3] == "listener 5000 localhost"


def test_the_secure_commands_do_not_import_the_broker_entry_point() -> None:
    """Issue 11: broker/secure_cli.py imported broker/__main__.py, a cycle that loaded __main__ twice."""
    import ast

    from tests.support import REPO_ROOT

    tree = ast.parse((REPO_ROOT / "broker" / "secure_cli.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "broker.__main__" not in imported and "broker.foreground" in imported


# -- limits for a fleet (issue 15) -------------------------------------------------------------------------


FLEET_SETTINGS = ("max_queued_messages 100000", "max_queued_bytes 1073741824", "max_inflight_messages 20",
                  "persistent_client_expiration 1h")


@pytest.mark.parametrize("template", ["mosquitto.conf", "mosquitto-secure.conf"])
def test_both_profiles_set_the_limits_a_fleet_needs(template: str) -> None:
    """A cohort of 1,000 updates of 0.9 MB fits the coordinator's queue (Mosquitto drops beyond it, silently),
    20 in flight is its MQTT 3.1.1 flow control; memory_limit stays unset (it disconnects clients: a storm)."""
    lines = active_lines((DEFAULT_CONFIG.parent / template).read_text(encoding="utf-8"))
    for setting in FLEET_SETTINGS:
        assert setting in lines, f"{template} lacks {setting!r}"
    assert int(next(v.split()[1] for v in lines if v.startswith("max_queued_bytes "))) >= 1000 * 906_643
    assert not any(line.startswith("memory_limit") for line in lines)


def test_the_development_profile_caps_connections_on_its_mqtt_listener_only() -> None:
    """max_connections is a listener option: it must follow the MQTT listener (after the launcher's rewrite)."""
    lines = active_lines(render_config(DEFAULT_CONFIG, 24567, "127.0.0.1", ws_port=24568))
    assert lines.index("max_connections -1") == lines.index("listener 24567 127.0.0.1") + 1


def test_the_broker_gets_the_hard_open_files_limit() -> None:
    from broker.open_files import UNLIMITED_CAP, broker_open_files, max_clients

    assert broker_open_files(1024, 20000) == 20000
    assert broker_open_files(20000, 20000) == 20000
    assert broker_open_files(1024, resource.RLIM_INFINITY) == UNLIMITED_CAP, "unlimited: what Linux allows"
    assert broker_open_files(4096, 2048) == 4096, "never lower than the soft limit"
    assert max_clients(20000) == 20000 - 32 and max_clients(10) == 0


def test_the_launchers_raise_the_limit_in_the_child_and_say_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from broker import open_files

    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(open_files.resource, "getrlimit", lambda which: (1024, 20000))
    monkeypatch.setattr(open_files.resource, "setrlimit", lambda which, limits: calls.append((which, limits)))
    with caplog.at_level("INFO", logger="broker.open_files"):
        apply = open_files.raising_open_files()
    assert "open files limit raised from 1024 to 20000" in caplog.text and "about 19968 clients" in caplog.text
    assert calls == [], "nothing changes in the launcher's own process"
    apply()
    assert calls == [(resource.RLIMIT_NOFILE, (20000, 20000))]
    caplog.clear()
    monkeypatch.setattr(open_files.resource, "getrlimit", lambda which: (1024, 1024))
    with caplog.at_level("INFO", logger="broker.open_files"):
        open_files.raising_open_files()()
    assert "can hold only about 992 clients" in caplog.text and "LimitNOFILE" in caplog.text
    assert len(calls) == 1, "already at the hard limit: nothing to raise"
