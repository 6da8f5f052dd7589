"""Locate, configure and run a real Mosquitto broker as a child process.

Used by `python -m broker` and by tests that need a broker on a free port.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from broker.open_files import raising_open_files
from broker.ports import free_port
from federation.errors import FedmqError

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Path = Path(__file__).with_name("mosquitto.conf")
"""The project's development Mosquitto config (template for `render_config`)."""

FALLBACK_PATHS: tuple[str, ...] = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)
"""Where packages install mosquitto when its sbin directory is not on PATH."""

_LISTENER_LINE = re.compile(r"^\s*listener\s+\d+\b.*$")
_PROTOCOL_LINE = re.compile(r"^\s*protocol\s+(\S+)\s*$")
_LOG_TAIL_LINES = 20
_ADDRESS_IN_USE = "Address already in use"   # mosquitto's log line when it can't listen on its port
BIND_RETRY_S = 5.0        # start(): how long to try again while the port is taken by something else for a moment
BIND_RETRY_WAIT_S = 0.2
_WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})


class BrokerError(FedmqError, RuntimeError):
    """Mosquitto could not be found, started or stopped."""


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary, or None when it is not installed."""
    on_path = shutil.which("mosquitto")
    if on_path:
        return on_path
    for candidate in FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def listener_line(port: int, bind: str | None) -> str:
    """Return a Mosquitto `listener` line for `port`, bound to `bind` if given."""
    return f"listener {port} {bind}" if bind else f"listener {port}"


def websockets_bind(bind: str | None) -> tuple[str | None, str | None]:
    """The address and `socket_domain` (ipv4/ipv6, or None) a websockets listener needs to really listen on `bind`.

    Mosquitto 2.0.11 hands the address to libwebsockets, which ignores it and listens on every interface, IPv4 and
    IPv6, unless `socket_domain` names the address's family; given a host name it silently opens nothing. So a host
    name is resolved here, and an address gets its family. No address (or `::`): every interface, as asked."""
    if not bind or bind == "::":
        return bind or None, None
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        try:
            found = socket.getaddrinfo(bind, None, type=socket.SOCK_STREAM)
        except OSError as error:
            raise BrokerError(f"bind address {bind!r} does not resolve ({error}); give an IP address") from None
        address = ipaddress.ip_address(found[0][4][0])
    return str(address), "ipv4" if address.version == 4 else "ipv6"


def render_config(
    template: Path,
    port: int,
    bind: str | None,
    extra_lines: Sequence[str] = (),
    ws_port: int | None = None,
) -> str:
    """Return `template`'s text with its first MQTT `listener NNNN` line set to `port`/`bind`.

    If the template has no listener line one is appended. `extra_lines` are
    appended at the end, after the listener, so listener options apply to it.
    Websockets listeners (a listener followed by `protocol websockets`) are
    kept as written when `ws_port` is None, removed when it is 0, and
    otherwise set to `ws_port`/`bind` (added before the MQTT listener when
    the template has none, so `extra_lines` still apply to the MQTT one),
    with what libwebsockets needs to honour `bind` (see websockets_bind).
    """
    lines = Path(template).read_text(encoding="utf-8").splitlines()
    websockets = websockets_listeners(lines)
    ws_address, ws_domain = websockets_bind(bind) if ws_port else (None, None)
    ws_options = [f"socket_domain {ws_domain}"] if ws_domain else []
    if ws_port is not None:
        for index in sorted(websockets, reverse=True):
            if ws_port == 0:
                del lines[websockets[index]]  # its `protocol websockets` line first: it comes later
                del lines[index]
            else:
                lines[websockets[index] + 1:websockets[index] + 1] = ws_options
                lines[index] = listener_line(ws_port, ws_address)
        if ws_port:  # the MQTT listener's index moved by the lines added above it
            websockets = websockets_listeners(lines)
    new_listener = listener_line(port, bind)
    for index, line in enumerate(lines):
        if _LISTENER_LINE.match(line) and (ws_port == 0 or index not in websockets):
            lines[index] = new_listener
            break
    else:
        index = len(lines)
        lines.append(new_listener)
    if ws_port and not websockets:
        lines[index:index] = [listener_line(ws_port, ws_address), "protocol websockets", *ws_options]
    lines.extend(extra_lines)
    return "\n".join(lines) + "\n"


def websockets_listeners(lines: Sequence[str]) -> dict[int, int]:
    """Map the index of each websockets `listener` line to the index of its `protocol websockets` line."""
    found: dict[int, int] = {}
    current: int | None = None
    for index, line in enumerate(lines):
        if _LISTENER_LINE.match(line):
            current = index
            continue
        protocol = _PROTOCOL_LINE.match(line)
        if protocol and current is not None and protocol.group(1) == "websockets":
            found[current] = index
    return found


def connect_host(bind: str | None) -> str:
    """Return the address a local client should dial for a listener bound to `bind`."""
    if bind is None or bind in _WILDCARD_ADDRESSES:
        return "127.0.0.1"
    return bind


def port_accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    """Return True when a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines of `path` written after byte `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class MosquittoProcess:
    """A Mosquitto broker child process on one port; a context manager.

    `with MosquittoProcess() as broker:` starts Mosquitto on a free loopback
    port (`broker.port`) and stops it on exit. With `ws_port` (e.g.
    `free_port()`) it also serves MQTT over WebSockets there (`broker.ws_url`);
    by default it has no websockets listener. Mosquitto's output goes to
    `log_path`. A temporary work directory is removed on exit; a given
    `workdir` is left in place.
    """

    def __init__(
        self,
        port: int | None = None,
        config_template: Path = DEFAULT_CONFIG,
        bind: str | None = "127.0.0.1",
        extra_config: Sequence[str] = (),
        workdir: Path | None = None,
        binary: str | None = None,
        ws_port: int = 0,
    ) -> None:
        self.port: int = port if port is not None else free_port(connect_host(bind))
        self.ws_port: int = ws_port
        self.config_template: Path = Path(config_template)
        self.bind: str | None = bind
        self.extra_config: list[str] = list(extra_config)
        self.binary: str | None = binary
        self._workdir: Path | None = Path(workdir) if workdir is not None else None
        self._owns_workdir: bool = workdir is None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    # -- public properties ---------------------------------------------------

    @property
    def host(self) -> str:
        """Address a local client should connect to."""
        return connect_host(self.bind)

    @property
    def ws_url(self) -> str | None:
        """The MQTT-over-WebSockets URL a local browser should use, or None without that listener."""
        return f"ws://{self.host}:{self.ws_port}" if self.ws_port else None

    @property
    def workdir(self) -> Path:
        """Directory holding the rendered config and the log (created on demand)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="fedmq-mosquitto-"))
        return self._workdir

    @property
    def config_path(self) -> Path:
        """The rendered config file Mosquitto is started with."""
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """File receiving Mosquitto's stdout and stderr (appended across restarts)."""
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        """True while the Mosquitto child process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running Mosquitto, if any."""
        return self._process.pid if self.running and self._process else None

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start Mosquitto and return once its port accepts TCP connections.

        Raises BrokerError (with the tail of Mosquitto's log) if the binary is
        missing, the process exits early, or the port does not open in time.
        """
        if self.running:
            raise BrokerError(f"mosquitto is already running on port {self.port}")
        binary = self._resolve_binary()
        for port in (self.port, self.ws_port) if self.ws_port else (self.port,):
            if port_accepts(self.host, port):
                raise BrokerError(f"port {port} on {self.host} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._render(), encoding="utf-8")
        give_up = time.monotonic() + BIND_RETRY_S
        while True:
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(binary)
            try:
                self._wait_until_listening(timeout, log_offset)
                break
            except BrokerError as error:
                # Something held the port for a moment (an outgoing connection that got it as its local port):
                # try again for a few seconds rather than fail a restart.
                if _ADDRESS_IN_USE not in str(error) or time.monotonic() > give_up:
                    raise
                log.warning("port %s is taken for now; starting mosquitto again in %.1f s", self.port, BIND_RETRY_WAIT_S)
                time.sleep(BIND_RETRY_WAIT_S)
        log.info("mosquitto (pid %s) listening on %s:%s", self.pid, self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop Mosquitto: SIGTERM, then SIGKILL after `timeout` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto (pid %s) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
            log.info("mosquitto on port %s stopped (exit code %s)", self.port, process.returncode)
        self._process = None
        self._close_log()

    def restart(self) -> None:
        """Stop and start again on the same port (in-memory state is lost)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop Mosquitto and remove the temporary work directory, if we made one."""
        self.stop()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"MosquittoProcess(port={self.port}, bind={self.bind!r}, {state})"

    # -- helpers ----------------------------------------------------------------

    def _resolve_binary(self) -> str:
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto not found (install with: sudo apt-get install mosquitto)")
        return binary

    def _render(self) -> str:
        return render_config(self.config_template, self.port, self.bind, self.extra_config, ws_port=self.ws_port)

    def _spawn(self, binary: str) -> None:
        self._log_handle = self.log_path.open("ab")
        command = [binary, "-c", str(self.config_path)]
        log.debug("starting %s", " ".join(command))
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                preexec_fn=raising_open_files(),  # one descriptor per client: soft RLIMIT_NOFILE up to the hard one
            )
        except OSError as error:
            self._close_log()
            raise BrokerError(f"cannot run {binary}: {error}") from error

    def _wait_until_listening(self, timeout: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise self._failure(f"mosquitto exited with code {code} during startup", log_offset)
            if port_accepts(self.host, self.port) and (not self.ws_port or port_accepts(self.host, self.ws_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise self._failure(f"mosquitto did not open port {self.port} within {timeout:.1f} s", log_offset)

    def _failure(self, reason: str, log_offset: int) -> BrokerError:
        tail = read_tail(self.log_path, log_offset)
        return BrokerError(f"{reason}; log {self.log_path}:\n{tail}" if tail else reason)

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
