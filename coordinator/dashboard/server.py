"""`python -m coordinator dashboard`: serves the dashboard page (static/) and a config.json that tells it
which broker WebSocket, topic prefix and run to follow. Any web server can serve static/ instead."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from federation.cli.broker_flags import SECURITY_FLAGS, AddressError, add_broker_flags, settings_overrides
from federation.transport.mqtt_link import BrokerAddress
from federation.config.settings import ConfigError, Settings, add_override_flags, load_settings, overrides_from_args

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_HTTP_PORT = 8080
# Broker hosts that only mean "this machine": the page then dials the host it was loaded from.
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})


@dataclass(frozen=True)
class DashboardConfig:
    """What the page reads from config.json; query parameters (?ws=&prefix=&run=) override it."""

    ws_url: str          # e.g. ws://broker.lan:9001; "" = ws://<the page's own host>:<ws_port>
    ws_port: int
    topic_prefix: str
    run: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def dashboard_config(settings: Settings, ws_url: str | None = None) -> DashboardConfig:
    """The page's settings from the fedmq settings: [broker] host, ws_port, topic_prefix and [run] name."""
    b = settings.broker
    address = BrokerAddress.from_settings(b)
    if ws_url is None and address.transport == "websockets":  # --broker ws://broker.lan:9001 or wss://...
        ws_url = address.url
    elif ws_url is None:
        if b.ws_port == 0:
            raise ConfigError("[broker] ws_port is 0 (no WebSockets listener): the dashboard needs one, or --ws-url")
        host = address.host
        ws_url = "" if host in _LOCAL_HOSTS else f"ws{'s' if address.use_tls else ''}://{_url_host(host)}:{b.ws_port}"
    elif not ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"--ws-url {ws_url!r} must start with ws:// or wss://")
    return DashboardConfig(ws_url=ws_url, ws_port=b.ws_port, topic_prefix=b.topic_prefix, run=settings.run.name)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class DashboardHandler(SimpleHTTPRequestHandler):
    """Static files from STATIC_DIR, plus /config.json made from the settings; never lists folders."""

    def __init__(self, *args: object, config: DashboardConfig, **kwargs: object) -> None:
        self.dashboard_config = config
        super().__init__(*args, directory=str(STATIC_DIR), **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:  # http.server's naming
        if self._nul_in_path():
            return
        if self.path.split("?", 1)[0] == "/config.json":
            body = self.dashboard_config.to_json()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_HEAD(self) -> None:  # http.server's naming
        if not self._nul_in_path():
            super().do_HEAD()

    def _nul_in_path(self) -> bool:
        """A NUL byte, raw or %00, would make open() raise ValueError (a traceback and no answer): answer 400."""
        if "\x00" in unquote(self.path):
            self.send_error(HTTPStatus.BAD_REQUEST, "NUL byte in the path")
            return True
        return False

    def list_directory(self, path: str) -> None:  # type: ignore[override]
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(config: DashboardConfig, host: str = "0.0.0.0", port: int = DEFAULT_HTTP_PORT) -> ThreadingHTTPServer:
    """An HTTP server for the dashboard (not started); port 0 picks a free one (server.server_port)."""
    if not (STATIC_DIR / "index.html").is_file():
        raise FileNotFoundError(f"the dashboard page is missing: {STATIC_DIR / 'index.html'}")
    server = ThreadingHTTPServer((host, port), partial(DashboardHandler, config=config))
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run `server` on a daemon thread (stop it with server.shutdown())."""
    thread = threading.Thread(target=server.serve_forever, name="fedmq-dashboard", daemon=True)
    thread.start()
    return thread


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator dashboard", allow_abbrev=False,
        description="Serve the live dashboard page: it follows the run over the broker's MQTT-over-WebSockets "
                    "listener ([broker] ws_port, or --broker ws://HOST:PORT) from the browser. Static files: "
                    + str(STATIC_DIR))
    add_broker_flags(parser, None, "not used: the browser picks its own MQTT client id")
    page = parser.add_argument_group("the page")
    page.add_argument("--http", type=int, default=DEFAULT_HTTP_PORT, metavar="PORT",
                      help="HTTP port of the page (default %(default)s; 0: any free port)")
    page.add_argument("--http-host", "--bind", dest="http_host", default="0.0.0.0", metavar="ADDRESS",
                      help="address to serve the page on (default: all interfaces)")
    page.add_argument("--ws-url", default=None,
                      help="broker WebSocket URL for the browser, e.g. ws://broker.lan:9001 (default: --broker when "
                           "it is a ws:// or wss:// URL, else its host and [broker] ws_port; for a local broker, the "
                           "page's own host)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_override_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    given = [flag for flag in SECURITY_FLAGS if getattr(args, flag[2:].replace("-", "_"))]
    if given:
        print(f"error: {', '.join(given)}: the dashboard page connects to the broker from the browser, which uses "
              "its own trust store and login; give it --broker wss://HOST:PORT (or --ws-url) instead",
              file=sys.stderr)
        return 2
    from federation.cli.console import configure_logging

    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config, {**overrides_from_args(args), **settings_overrides(args)})
        config = dashboard_config(settings, args.ws_url)
    except (ConfigError, AddressError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(config, args.http_host, args.http)
    except OSError as exc:
        print(f"error: cannot serve the page on {args.http_host}:{args.http}: {exc.strerror or exc}; choose "
              "another port with --http PORT", file=sys.stderr)
        return 2
    host = "localhost" if args.http_host in _LOCAL_HOSTS else args.http_host
    ws = config.ws_url or f"ws://<this host>:{config.ws_port}"
    log.info("dashboard on http://%s:%d/ following run %r under %r through %s; Ctrl-C stops it", host,
             server.server_port, config.run, config.topic_prefix, ws)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0
