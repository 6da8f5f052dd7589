"""Integration tests: real Mosquitto / amqtt brokers carrying multi-MB MQTT messages.

Starts brokers on free loopback ports and always stops them, even on failure.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import BrokerError, MosquittoProcess, find_mosquitto, free_port
from broker.mosquitto_process import port_accepts
from tests.support import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

FIVE_MB = 5 * 1024 * 1024
WAIT_S = 15.0
PROTOCOLS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


# -- MQTT client helper ---------------------------------------------------------------


@dataclass
class Peer:
    """A connected paho 2.x client whose received messages land in a queue."""

    client: mqtt.Client
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    _acks: queue.Queue[int] = field(default_factory=queue.Queue)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self._acks.get(timeout=WAIT_S) == mid

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), "broker did not acknowledge the QoS 1 publish"

    def next_message(self, timeout: float = WAIT_S) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)


@contextmanager
def mqtt_peer(port: int, protocol: int, name: str, host: str = "127.0.0.1") -> Iterator[Peer]:
    """Connect a paho client (CallbackAPIVersion.VERSION2) and disconnect it afterwards."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=protocol)
    peer = Peer(client)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    def on_subscribe(_c: mqtt.Client, _u: object, mid: int, codes: list[mqtt.ReasonCode], _p: object) -> None:
        assert not any(code.is_failure for code in codes), codes
        peer._acks.put(mid)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda _c, _u, message: peer.messages.put(message)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(WAIT_S), "no CONNACK"
        assert not refused, f"connection refused: {refused}"
        yield peer
    finally:
        client.disconnect()
        client.loop_stop()


def payload_of(size: int) -> bytes:
    return os.urandom(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- broker fixtures ------------------------------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(workdir=tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
    assert not broker.running


@dataclass
class CliBroker:
    """`python -m broker ...` running as a subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def wait_for_port(cli: CliBroker, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert cli.process.poll() is None, f"broker exited early ({cli.process.returncode}):\n{cli.log()}"
        if port_accepts("127.0.0.1", cli.port):
            return
        time.sleep(0.05)
    pytest.fail(f"broker did not open port {cli.port}:\n{cli.log()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


@contextmanager
def cli_broker(tmp_path: Path, *args: str) -> Iterator[CliBroker]:
    """Run `python -m broker --port FREE *args` and make sure it is gone afterwards."""
    port = free_port()
    log_path = tmp_path / "cli-broker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", "--port", str(port), *args],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    cli = CliBroker(process, port, log_path)
    try:
        wait_for_port(cli)
        yield cli
    finally:
        stop_process(process)


def terminate_and_wait(cli: CliBroker) -> int:
    cli.process.send_signal(signal.SIGTERM)
    return cli.process.wait(timeout=10)


# -- (a) MosquittoProcess -------------------------------------------------------------------------


def test_mosquitto_binary_is_installed() -> None:
    binary = find_mosquitto()
    assert binary is not None and os.access(binary, os.X_OK)


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_retained_5mb_message_then_restart_clears_it(mosquitto: MosquittoProcess, protocol: int) -> None:
    topic = f"fedmq/test/retained/{protocol}"
    data = payload_of(FIVE_MB)
    with mqtt_peer(mosquitto.port, protocol, "publisher") as publisher:
        publisher.publish(topic, data, qos=1, retain=True)
    with mqtt_peer(mosquitto.port, protocol, "late-subscriber") as subscriber:
        subscriber.subscribe(topic)
        message = subscriber.next_message()
    assert message.retain
    assert len(message.payload) == FIVE_MB
    assert digest(message.payload) == digest(data)

    old_pid = mosquitto.pid
    mosquitto.restart()
    assert mosquitto.running and mosquitto.pid != old_pid
    assert port_accepts(mosquitto.host, mosquitto.port)

    with mqtt_peer(mosquitto.port, protocol, "after-restart") as peer:
        peer.subscribe(topic)
        peer.publish(topic, b"marker", qos=1)
        first = peer.next_message()
        # A retained message would be delivered right after SUBACK, before the marker.
        assert first.payload == b"marker" and not first.retain
        assert peer.messages.empty()


def test_mosquitto_process_logs_and_stops(tmp_path: Path) -> None:
    broker = MosquittoProcess(workdir=tmp_path)
    with broker:
        assert broker.running and port_accepts(broker.host, broker.port)
        assert f"listener {broker.port} 127.0.0.1" in broker.config_path.read_text()
    assert not broker.running
    assert not port_accepts("127.0.0.1", broker.port)
    assert "mosquitto version" in broker.log_path.read_text()


def test_mosquitto_process_reports_startup_failure_with_log_tail(tmp_path: Path) -> None:
    broker = MosquittoProcess(workdir=tmp_path, extra_config=["no_such_option 1"])
    try:
        with pytest.raises(BrokerError, match="no_such_option"):
            broker.start(timeout=5)
        assert not broker.running
    finally:
        broker.close()


def test_mosquitto_process_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        broker = MosquittoProcess(port=port, workdir=tmp_path)
        try:
            with pytest.raises(BrokerError, match="already in use"):
                broker.start()
        finally:
            broker.close()


def test_a_restart_waits_out_a_socket_that_holds_the_port_for_a_moment(tmp_path: Path) -> None:
    """The CI failure of a storm test: while the broker restarted, something held its port (an outgoing connection
    that got it as its local port), and Mosquitto exited with "Address already in use". A restart now tries again
    for a few seconds."""
    broker = MosquittoProcess(workdir=tmp_path)
    try:
        broker.start()
        broker.stop()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", broker.port))       # bound, not listening: as a connected client socket
        threading.Timer(1.0, holder.close).start()
        started = time.monotonic()
        broker.start()
        assert broker.running and port_accepts(broker.host, broker.port)
        assert time.monotonic() - started >= 0.9, "it waited for the holder to let go"
        assert "Address already in use" in broker.log_path.read_text()
    finally:
        broker.close()


def test_free_ports_lie_below_the_ephemeral_range_so_no_outgoing_connection_takes_one() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(10000 <= port < low for port in ports), (low, ports)
    # Many clients dialling a stopped broker's port: none connects (to itself or anything), the port stays free.
    port = ports[0]
    for _ in range(3000):
        assert not port_accepts("127.0.0.1", port, timeout=0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


# -- (b) python -m broker --embedded -------------------------------------------------------------


def test_cli_embedded_broker_carries_5mb_qos1(tmp_path: Path) -> None:
    topic = "fedmq/test/embedded"
    data = payload_of(FIVE_MB)
    with cli_broker(tmp_path, "--embedded", "--bind", "127.0.0.1") as cli:
        with mqtt_peer(cli.port, mqtt.MQTTv311, "emb-sub") as subscriber, \
                mqtt_peer(cli.port, mqtt.MQTTv311, "emb-pub") as publisher:
            subscriber.subscribe(topic)
            publisher.publish(topic, data, qos=1)
            message = subscriber.next_message()
        assert digest(message.payload) == digest(data)
        assert message.qos == 1
        assert terminate_and_wait(cli) == 0
        assert not port_accepts("127.0.0.1", cli.port)
        assert "FALLBACK" in cli.log() and "MQTT 3.1.1 only" in cli.log()


# -- (c) python -m broker (Mosquitto) -------------------------------------------------------------


def test_cli_mosquitto_broker_serves_mqtt5_and_exits_on_sigterm(tmp_path: Path) -> None:
    topic = "fedmq/test/cli"
    with cli_broker(tmp_path) as cli:
        assert "0.0.0.0" in cli.log()
        with mqtt_peer(cli.port, mqtt.MQTTv5, "cli-peer") as peer:  # amqtt would refuse MQTT 5
            peer.subscribe(topic)
            peer.publish(topic, b"hello", qos=1)
            assert peer.next_message().payload == b"hello"
        assert terminate_and_wait(cli) == 0
        assert not port_accepts("127.0.0.1", cli.port), "mosquitto outlived its launcher"
        assert "mosquitto version" in cli.log()


@pytest.mark.parametrize("backend_args", [(), ("--embedded",)], ids=["mosquitto", "embedded"])
def test_cli_exits_nonzero_when_port_is_taken(backend_args: tuple[str, ...]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "broker", "--port", str(port), "--bind", "127.0.0.1", *backend_args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode != 0
    assert "already in use" in result.stderr
