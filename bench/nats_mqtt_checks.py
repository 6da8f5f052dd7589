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


def resubscribe_check(ports: list[int], will_topic: str, label: str) -> tuple[str, bool, str]:
    """Subscribing again to a filter delivers its retained messages again and loses no QoS 1 message in flight
    (MqttLink's second look on a cluster relies on both)."""
    flood_pub = Probe(ports[-1], f"check-flood-{len(ports)}")
    flood_pub.wait(lambda: flood_pub.connack == 0, 40)
    watcher = Probe(ports[-2], f"check-resub-{len(ports)}")
    watcher.wait(lambda: watcher.connack == 0, 40)
    filters = [("fedmq/run-1.a/client/+/status", 1), ("fedmq/run-1.a/update/+", 1)]
    watcher.client.subscribe(filters)
    watcher.wait(lambda: watcher.subacks, 40)
    infos = []

    def flood() -> None:
        for i in range(1000):
            infos.append(flood_pub.client.publish(f"fedmq/run-1.a/update/d{i % 10}", str(i).encode(), qos=1))
            time.sleep(0.002)

    sender = threading.Thread(target=flood)
    sender.start()
    for _ in range(5):
        time.sleep(0.3)
        watcher.client.subscribe(filters)
    sender.join()
    watcher.wait(lambda: len({p for t, p, _ in watcher.received if "/update/d" in t}) >= 1000, 60)
    got = {p for t, p, _ in watcher.received if "/update/d" in t}
    acked = sum(info.rc == 0 and info.is_published() for info in infos)
    dropped = flood_pub.disconnected.is_set()
    births = sum(1 for t, _, retained in watcher.received if retained and t == will_topic)
    watcher.close()
    flood_pub.close()
    return (f"SUBSCRIBE again 5x, {label}: retained delivered each time, no QoS 1 message lost",
            len(got) == 1000 and births == 6, f"{len(got)}/1000 updates ({acked} acknowledged; publisher "
            f"{'lost its connection' if dropped else 'stayed connected'}), retained {births}x")


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

        results.append(resubscribe_check(ports, will_topic, "healthy cluster"))

        # 4. Retained: published on node 1, node 1 SIGKILLed, read on nodes 2 and 3.
        retained = "fedmq/run-1.a/model/global"
        keep = pub.client.publish(retained, b"model-v1", qos=1, retain=True)
        keep.wait_for_publish(10)
        pub.client.loop_stop()
        cluster.kill(0)
        time.sleep(1.0)
        for node in (1, 2):
            tries, ok, deadline = 0, False, time.monotonic() + 60
            while not ok and time.monotonic() < deadline:  # a subscription made during re-election may miss it
                tries += 1
                reader = Probe(ports[node], f"check-read-{node}-{tries}")
                reader.wait(lambda: reader.connack == 0, 40)
                reader.client.subscribe(retained, 1)
                ok = reader.wait(lambda: (retained, b"model-v1", True) in reader.received, 10)
                reader.close()
            results.append((f"retained from node 1 read on node {node + 1} after node 1's SIGKILL", ok,
                            f"on subscription {tries}"))
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

        results.append(resubscribe_check(ports[1:], will_topic, "after a node's death"))

        # 6. MQTT 5 and $share.
        v5 = Probe(ports[1], "check-v5", protocol=mqtt.MQTTv5)
        v5.wait(lambda: v5.connack is not None or v5.disconnected.is_set(), 10)
        results.append(("MQTT 5 refused", v5.connack != 0, f"CONNACK {v5.connack}, "
                                                          f"disconnected {v5.disconnected.is_set()}"))
        v5.close()
        share = Probe(ports[1], "check-share")
        share.wait(lambda: share.connack == 0)
        share.client.subscribe("$share/g/fedmq/run-1.a/update/+", 1)
        share.wait(lambda: share.subacks or share.disconnected.is_set(), 40)
        sender = Probe(ports[2], "check-share-pub")
        sender.wait(lambda: sender.connack == 0, 40)
        sender.client.publish("fedmq/run-1.a/update/s1", b"s", qos=1).wait_for_publish(20)
        time.sleep(2)
        results.append(("$share: no shared subscriptions (granted as a literal topic, never delivers)",
                        not share.received, f"SUBACK {share.subacks}, received {len(share.received)}"))
        sender.close()
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
