"""Checks what fedmq needs of a 3-node NATS cluster's MQTT: QoS 1 across nodes, retained messages surviving the
SIGKILL of the node that took them, last wills, the payload limit, fedmq's topic characters, no MQTT 5, no $share.

Usage: python bench/nats_mqtt_checks.py   (prints one line per check, exits 1 if any differs from README's table)
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker.nats_cluster import MAX_PAYLOAD_BYTES, NatsCluster

HOST = "127.0.0.1"


class Probe:
    """A paho client that records what it receives."""

    def __init__(self, port: int, client_id: str, protocol: int = mqtt.MQTTv311,
                 will: tuple[str, bytes] | None = None) -> None:
        self.received: list[tuple[str, bytes, bool]] = []
        self.subacks: list[list[int]] = []
        self.connack: int | None = None
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.append([int(x.value) for x in codes])
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect(HOST, port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode,
                    props: object) -> None:
        self.connack = int(rc.value)

    def wait(self, predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="fedmq-nats-checks-") as workdir, \
            NatsCluster(Path(workdir), nodes=3) as cluster:
        ports = [p.mqtt for p in cluster.ports]
        print("cluster:", ",".join(cluster.mqtt_urls()), flush=True)

        # 1. QoS 1 across nodes, with fedmq's topic characters (dots, dashes, underscores in ids).
        sub = Probe(ports[1], "check-sub")
        sub.wait(lambda: sub.connack == 0)
        sub.client.subscribe([("fedmq/run-1.a/update/+", 1), ("fedmq/run-1.a/client/+/status", 1)])
        sub.wait(lambda: sub.subacks)
        pub = Probe(ports[0], "check-pub")
        pub.wait(lambda: pub.connack == 0)
        info = pub.client.publish("fedmq/run-1.a/update/dev_1.x-2", b"u" * 1000, qos=1)
        info.wait_for_publish(10)
        got = sub.wait(lambda: any(t == "fedmq/run-1.a/update/dev_1.x-2" for t, _, _ in sub.received))
        results.append(("QoS 1 node 1 -> node 2, topic with . - _", got and info.is_published(), str(sub.subacks)))

        # 2. Payload limit: just under MAX_PAYLOAD_BYTES passes; over it the publisher is disconnected.
        big = pub.client.publish("fedmq/run-1.a/update/big", b"b" * (MAX_PAYLOAD_BYTES - 4096), qos=1)
        big.wait_for_publish(20)
        got_big = sub.wait(lambda: any(t.endswith("/big") for t, _, _ in sub.received), 20)
        results.append((f"payload of {MAX_PAYLOAD_BYTES - 4096} bytes", got_big, ""))
        over = Probe(ports[0], "check-over")
        over.wait(lambda: over.connack == 0)
        over.client.publish("fedmq/run-1.a/update/over", b"o" * (MAX_PAYLOAD_BYTES + 1), qos=1)
        cut = over.disconnected.wait(10)
        results.append((f"payload of {MAX_PAYLOAD_BYTES + 1} bytes refused (connection closed)", cut, ""))
        over.close()

        # 3. Last will: a client on node 3 whose connection dies without DISCONNECT.
        will_topic = "fedmq/run-1.a/client/dev.w/status"
        raw_id = b"check-will"
        will_payload = b"offline"
        flags = 0x02 | 0x04 | 0x08 | 0x20  # clean, will, will QoS 1, will retain
        body = (b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x02" + len(raw_id).to_bytes(2, "big") + raw_id
                + len(will_topic).to_bytes(2, "big") + will_topic.encode()
                + len(will_payload).to_bytes(2, "big") + will_payload)
        raw = socket.create_connection((HOST, ports[2]))
        raw.sendall(bytes([0x10, len(body)]) + body)
        raw.recv(4)
        raw.close()  # no DISCONNECT: the broker must publish the will
        got_will = sub.wait(lambda: any(t == will_topic and p == will_payload for t, p, _ in sub.received))
        results.append(("last will of a dropped connection on node 3, seen on node 2", got_will, ""))

        # 4. Retained: published on node 1, node 1 SIGKILLed, read on nodes 2 and 3.
        retained = "fedmq/run-1.a/model/global"
        keep = pub.client.publish(retained, b"model-v1", qos=1, retain=True)
        keep.wait_for_publish(10)
        pub.client.loop_stop()
        cluster.kill(0)
        time.sleep(1.0)
        for node in (1, 2):
            reader = Probe(ports[node], f"check-read-{node}")
            reader.wait(lambda: reader.connack == 0, 20)
            reader.client.subscribe(retained, 1)
            ok = reader.wait(lambda: (retained, b"model-v1", True) in reader.received, 20)
            results.append((f"retained from node 1 read on node {node + 1} after node 1's SIGKILL", ok, ""))
            reader.close()
        # ...and the will's retained copy too (a birth/death on a status topic).
        reader = Probe(ports[2], "check-read-will")
        reader.wait(lambda: reader.connack == 0, 20)
        reader.client.subscribe(will_topic, 1)
        results.append(("retained will read after node 1's SIGKILL",
                        reader.wait(lambda: (will_topic, will_payload, True) in reader.received), ""))
        reader.close()

        # 5. A client of the dead node reconnects to node 2 with the same client id.
        again = Probe(ports[1], "check-pub")
        results.append(("same client id reconnects on node 2 after its node died",
                        again.wait(lambda: again.connack == 0, 20), f"CONNACK {again.connack}"))
        again.close()

        # 6. MQTT 5 and $share.
        v5 = Probe(ports[1], "check-v5", protocol=mqtt.MQTTv5)
        v5.wait(lambda: v5.connack is not None or v5.disconnected.is_set(), 10)
        results.append(("MQTT 5 refused", v5.connack != 0, f"CONNACK {v5.connack}, "
                                                          f"disconnected {v5.disconnected.is_set()}"))
        v5.close()
        share = Probe(ports[1], "check-share")
        share.wait(lambda: share.connack == 0)
        share.client.subscribe("$share/g/fedmq/run-1.a/update/+", 1)
        share.wait(lambda: share.subacks or share.disconnected.is_set(), 10)
        results.append(("$share refused", not share.subacks or share.subacks[0][0] >= 0x80,
                        f"SUBACK {share.subacks}, disconnected {share.disconnected.is_set()}"))
        share.close()
        sub.close()
    failed = 0
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}".rstrip())
        failed += not ok
    print(f"{len(results) - failed} passed, {failed} failed; load average {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
