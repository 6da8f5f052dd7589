"""Tests for the dashboard's HTTP side (coordinator.dashboard): config.json from the settings, the static
files, and the vendored JavaScript (present, small, as recorded, licensed, nothing from a CDN)."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from html.parser import HTMLParser

import pytest

from coordinator.dashboard import STATIC_DIR, DashboardConfig, dashboard_config, make_server
from coordinator.dashboard.server import main, serve_in_thread
from federation.config.settings import ConfigError, load_settings

VENDOR = STATIC_DIR / "vendor"
MAX_VENDORED_BYTES = 2 * 1024 * 1024


@pytest.fixture
def served() -> Iterator[tuple[str, DashboardConfig]]:
    config = DashboardConfig(ws_url="", ws_port=9001, topic_prefix="lab/fedmq", run="r1")
    server = make_server(config, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_port}", config
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.mark.parametrize("host, ws_port, expected", [
    ("localhost", 9001, ""),                 # the page dials the host it was loaded from
    ("127.0.0.1", 9002, ""),
    ("broker.lan", 9001, "ws://broker.lan:9001"),
    ("10.0.0.5", 8083, "ws://10.0.0.5:8083"),
    ("fd00::5", 9001, "ws://[fd00::5]:9001"),
])
def test_config_from_settings(host: str, ws_port: int, expected: str) -> None:
    settings = load_settings(None, {"broker.host": host, "broker.ws_port": ws_port, "run.name": "r2",
                                    "broker.topic_prefix": "lab/fedmq"})
    config = dashboard_config(settings)
    assert config == DashboardConfig(ws_url=expected, ws_port=ws_port, topic_prefix="lab/fedmq", run="r2")


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"ws_port is 0"):
        dashboard_config(load_settings(None, {"broker.ws_port": 0}))
    assert dashboard_config(load_settings(None, {"broker.ws_port": 0}), "wss://b:443/mqtt").ws_url == "wss://b:443/mqtt"
    with pytest.raises(ConfigError, match="must start with ws:// or wss://"):
        dashboard_config(load_settings(None), "http://broker:9001")


def test_serves_the_page_and_its_config(served: tuple[str, DashboardConfig]) -> None:
    base, config = served
    status, headers, body = get(base + "/")
    assert status == 200 and b'<script src="vendor/mqtt.min.js">' in body and b'id="chart-accuracy"' in body
    status, headers, body = get(base + "/config.json?x=1")
    assert status == 200 and headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert json.loads(body) == {"ws_url": "", "ws_port": 9001, "topic_prefix": "lab/fedmq", "run": "r1"}
    status, headers, body = get(base + "/vendor/mqtt.min.js")
    assert status == 200 and "javascript" in headers["Content-Type"] and body == (VENDOR / "mqtt.min.js").read_bytes()


@pytest.mark.parametrize("path", ["/vendor/", "/../../etc/passwd", "/nope.js", "/%2e%2e/coordinator/engine.py"])
def test_no_listings_and_nothing_outside_static(served: tuple[str, DashboardConfig], path: str) -> None:
    status, _, body = get(served[0] + path)
    assert status == 404
    assert b"root:" not in body and b"class Coordinator" not in body


def test_vendored_libraries_are_the_recorded_builds_with_licenses() -> None:
    readme = (VENDOR / "README.md").read_text()
    for name, license_file in (("mqtt.min.js", "LICENSE.mqtt.md"), ("msgpack.min.js", "LICENSE.msgpack")):
        data = (VENDOR / name).read_bytes()
        assert 10_000 < len(data) < MAX_VENDORED_BYTES, name
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name} |"))
        assert hashlib.sha256(data).hexdigest() in row, f"{name} differs from the build recorded in vendor/README.md"
        assert re.search(r"\| \d+\.\d+\.\d+ \|", row), f"{name}: no version recorded"
        assert "Permission" in (VENDOR / license_file).read_text()


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_the_page_loads_nothing_from_elsewhere() -> None:
    parser = _Refs()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.refs, "index.html references its scripts and style sheet"
    for ref in parser.refs:
        assert ref == "data:," or ("//" not in ref and (STATIC_DIR / ref).is_file()), ref
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{name} names an internet URL"


def test_command_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ws-url", "http://x:1"]) == 2
    assert "must start with ws://" in capsys.readouterr().err
    assert main(["--broker.ws_port", "0"]) == 2
    assert "ws_port is 0" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", [b"/%00", b"/index.html%00.js", b"/vendor/%00/x", b"/\x00", b"/config.json%00"])
def test_a_nul_byte_in_the_path_is_a_400_not_a_traceback(served: tuple[str, DashboardConfig], path: bytes,
                                                         method: str) -> None:
    import socket

    base, _ = served
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(method.encode() + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert get(f"{base}/index.html")[0] == 200, "the server keeps serving"
