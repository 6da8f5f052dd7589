"""Start and stop a broker, a coordinator and edge clients as real processes on this machine.

Every process logs to its own file, workdir/logs/<name>.log; `stop()` never leaves one behind, and on Linux
the children die with this process even when it is killed (SIGKILL included)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker import MosquittoProcess, find_mosquitto, free_port

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("broker", "dashboard")  # processes that run until stopped: wait_all() does not wait for them
TERM_GRACE_S = 5.0  # stop(): how long processes get to exit after SIGTERM before SIGKILL


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class LocalFederation:
    """Processes of one local run. Use as a context manager, or call stop()."""

    workdir: Path
    run_name: str = "local"
    config: Path | None = REPO_ROOT / "config" / "default.toml"   # None: the coordinator's built-in defaults
    embedded_broker: bool = False
    ws_port: int = 0          # also serve MQTT over WebSockets here (Mosquitto only), for the dashboard
    port: int = 0
    procs: dict[str, Proc] = field(default_factory=dict)
    broker: MosquittoProcess | None = None
    broker_config: list[str] = field(default_factory=list)   # extra mosquitto.conf lines
    env: Mapping[str, str] | None = None     # the children's environment (default os.environ), plus PYTHONPATH etc.

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()

    @property
    def run_dir(self) -> Path:
        return self.workdir / self.run_name

    def start_broker(self) -> None:
        if self.embedded_broker or find_mosquitto() is None:
            self.embedded_broker = True
            self.spawn("broker", [sys.executable, "-m", "broker", "--embedded", "--port", str(self.port),
                                   "--bind", "127.0.0.1"])
            _wait_for_port(self.port, 20)
        else:
            self.broker = MosquittoProcess(port=self.port, workdir=self.workdir / "mosquitto", ws_port=self.ws_port,
                                           extra_config=self.broker_config)
            self.broker.start()
        log.info("broker on 127.0.0.1:%d (%s)", self.port, "embedded amqtt" if self.embedded_broker else "mosquitto")

    def coordinator_args(self, overrides: dict[str, object]) -> list[str]:
        settings = {"broker.port": self.port, "broker.host": "127.0.0.1", "run.name": self.run_name,
                    "run.output_dir": self.workdir, **overrides}
        if self.embedded_broker:
            settings["broker.mqtt_version"] = "3.1.1"
        args = [sys.executable, "-m", "coordinator"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        for key, value in settings.items():
            args += [f"--{key}", *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
        return args

    def start_coordinator(self, overrides: dict[str, object] | None = None, name: str = "coordinator") -> Proc:
        return self.spawn(name, self.coordinator_args(overrides or {}))

    def start_dashboard(self, http_port: int, timeout: float = 30) -> Proc:
        """`python -m coordinator dashboard` on http://127.0.0.1:http_port/, following this run through the
        broker's websockets listener (needs ws_port and Mosquitto)."""
        if not self.ws_port or self.embedded_broker:
            raise RuntimeError("the dashboard needs Mosquitto with a websockets listener: set ws_port and do not "
                               "use the embedded broker")
        config = ["--config", str(self.config)] if self.config is not None else []
        proc = self.spawn("dashboard", [sys.executable, "-m", "coordinator", "dashboard", *config,
                                        "--http-host", "127.0.0.1", "--http", str(http_port), "--run", self.run_name,
                                        "--broker.ws_port", str(self.ws_port)])
        _wait_for_port(http_port, timeout)
        return proc

    def start_client(self, client_id: str, args: list[str], program: Sequence[str] = ("-m", "edge_client")) -> Proc:
        """An edge client; `program` replaces `-m edge_client` (e.g. bench/attacks.py, which wraps it)."""
        return self.spawn(client_id, [sys.executable, *program, "--broker", "127.0.0.1",
                                       "--port", str(self.port), "--run", self.run_name, "--client-id", client_id,
                                       *args])

    def spawn(self, name: str, argv: list[str]) -> Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        base = os.environ if self.env is None else self.env
        env = {**base, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": base.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), base.get("PYTHONPATH")]))}
        with open(log_path, "wb") as fh:
            popen = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=fh,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True,  # own process group
                                     preexec_fn=_die_with_parent())
        proc = Proc(name, popen, log_path)
        self.procs[name] = proc
        return proc

    def wait(self, name: str, timeout: float) -> int:
        """Wait for one process; TimeoutError with its log tail if it runs too long."""
        proc = self.procs[name]
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running after {timeout:g} s; log tail:\n{proc.log_tail()}") from None

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        return {name: self.wait(name, max(0.1, deadline - time.monotonic())) for name in list(self.procs)
                if name not in SERVICES}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(10)

    def stop(self) -> None:
        """SIGTERM every running process group at once, SIGKILL what is left after TERM_GRACE_S; then the broker."""
        running = [p.popen for p in self.procs.values() if p.popen.poll() is None]
        for popen in running:
            _signal_group(popen, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        for popen in running:
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for popen in running:
            _signal_group(popen, signal.SIGKILL)  # also when the leader is gone: a grandchild could hold the group
            popen.wait()
        if self.broker is not None:
            self.broker.close()

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this process dies, even by SIGKILL.

    PR_SET_PDEATHSIG fires when the forking *thread* exits, so it is armed only for children spawned from
    the main thread (which lives as long as the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def _wait_for_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no broker listening on port {port} after {timeout:g} s")
