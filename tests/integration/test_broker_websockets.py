"""Mosquitto's MQTT-over-WebSockets listener (for the dashboard): a real broker started by
MosquittoProcess(ws_port=...), a paho client over WebSockets and one over TCP talking to each other."""

from __future__ import annotations

import queue
import socket
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import MosquittoProcess, free_port
from broker.mosquitto_process import port_accepts

pytestmark = pytest.mark.timeout(60)


def connected_client(name: str, host: str, port: int, transport: str) -> tuple[mqtt.Client, queue.Queue]:
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, transport=transport)
    client.on_connect = lambda *_: ready.set()
    client.on_message = lambda c, u, msg: received.put(msg)
    client.connect(host, port)
    client.loop_start()
    assert ready.wait(10), f"{name} could not connect over {transport} to {host}:{port}"
    return client, received


def test_websockets_listener_carries_retained_messages_both_ways(tmp_path: Path) -> None:
    ws_port = free_port()
    with MosquittoProcess(workdir=tmp_path, ws_port=ws_port) as broker:
        assert broker.ws_url == f"ws://127.0.0.1:{ws_port}"
        assert f"listener {ws_port} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4" in broker.config_path.read_text()
        tcp, _ = connected_client("tcp-side", broker.host, broker.port, "tcp")
        tcp.publish("fedmq/t/metrics", b"\x81\xa4type\xadround_metrics", qos=1, retain=True).wait_for_publish(10)
        ws, received = connected_client("ws-side", broker.host, ws_port, "websockets")
        try:
            ws.subscribe("fedmq/t/#", qos=1)
            msg = received.get(timeout=10)
            assert (msg.topic, msg.payload, msg.retain) == ("fedmq/t/metrics", b"\x81\xa4type\xadround_metrics", True)
            ws.publish("fedmq/t/from-ws", b"hello", qos=1, retain=True).wait_for_publish(10)
            late, late_received = connected_client("tcp-late", broker.host, broker.port, "tcp")
            late.subscribe("fedmq/t/from-ws", qos=1)
            assert late_received.get(timeout=10).payload == b"hello"
            late.loop_stop()
            late.disconnect()
        finally:
            ws.loop_stop()
            ws.disconnect()
            tcp.loop_stop()
            tcp.disconnect()


def test_no_websockets_listener_unless_asked(tmp_path: Path) -> None:
    with MosquittoProcess(workdir=tmp_path) as broker:
        assert broker.ws_url is None
        text = broker.config_path.read_text()
        assert "protocol websockets" not in text and "listener 9001" not in text
        assert port_accepts(broker.host, broker.port)


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets listening on TCP `port` (IPv4 as dotted quad, IPv6 as hex)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than 127.x, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_websockets_listener_honours_the_bind_address(tmp_path: Path) -> None:
    """Issue 9: with `listener PORT 127.0.0.1` + `protocol websockets` Mosquitto 2.0.11 (libwebsockets) listened on
    every interface, IPv4 and IPv6, while the log said 127.0.0.1."""
    ws_port = free_port()
    with MosquittoProcess(workdir=tmp_path, bind="127.0.0.1", ws_port=ws_port) as broker:
        assert listening_addresses(broker.port) == ["127.0.0.1"]
        assert listening_addresses(ws_port) == ["127.0.0.1"], "the websockets listener is open beyond loopback"
        other = non_loopback_ipv4()
        if other is not None:
            assert not port_accepts(other, ws_port), f"the websockets port answers on {other}"
        ws, _ = connected_client("ws-loopback", "127.0.0.1", ws_port, "websockets")  # the control
        ws.loop_stop()
        ws.disconnect()
