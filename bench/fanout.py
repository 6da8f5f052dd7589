"""The broker's physical limit for bench/scale.py: how fast Mosquitto fans one global model (a 0.9 MB retained QoS 1
message) out to N subscribers, and its RSS meanwhile.

N light paho subscribers, spread over a few worker processes, each driving its clients from one selector loop (no
thread per client). Once all have subscribed, one publisher sends the model; each worker notes when every one of
its clients has the whole message. Reported: time from publish to the first, the median and the last receipt."""

from __future__ import annotations

import multiprocessing
import os
import selectors
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TOPIC = "fedmq/fanout/model/global"


@dataclass(frozen=True)
class Fanout:
    subscribers: int
    payload_bytes: int
    first_s: float
    median_s: float
    last_s: float
    broker_rss_peak: int      # bytes, Mosquitto's VmHWM after the fan-out

    def text(self) -> str:
        rate = self.subscribers * self.payload_bytes / self.last_s / 1e6 if self.last_s > 0 else 0.0
        return (f"{self.subscribers:,} subscribers: first {self.first_s:.2f} s, median {self.median_s:.2f} s, last "
                f"{self.last_s:.2f} s ({rate:,.0f} MB/s out of the broker), Mosquitto peak RSS "
                f"{self.broker_rss_peak / 1e6:,.0f} MB")


def _worker(host: str, port: int, count: int, first: int, ready: Connection, results: Connection,
            timeout_s: float) -> None:
    """Connect `count` subscribers, say so, then report (index, receipt time) for each as the model arrives."""
    received: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    clients: list[mqtt.Client] = []
    subscribed = 0

    def on_subscribe(client: mqtt.Client, userdata: int, mid: int, codes: object, props: object) -> None:
        nonlocal subscribed
        subscribed += 1

    def on_message(client: mqtt.Client, userdata: int, message: mqtt.MQTTMessage) -> None:
        if message.payload and userdata not in received:
            received[userdata] = time.time()

    def on_connect(client: mqtt.Client, userdata: int, flags: object, code: object, props: object) -> None:
        client.subscribe(TOPIC, qos=1)

    for k in range(count):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fanout-{first + k}", userdata=first + k)
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect(host, port, keepalive=120)
        selector.register(client.socket(), selectors.EVENT_READ, client)
        clients.append(client)
    deadline = time.monotonic() + timeout_s
    said_ready = False
    last_misc = 0.0
    while time.monotonic() < deadline and len(received) < count:
        for key, _ in selector.select(timeout=0.05):
            key.data.loop_read()
        for client in clients:
            if client.want_write():
                client.loop_write()
        if time.monotonic() - last_misc > 1.0:
            last_misc = time.monotonic()
            for client in clients:
                client.loop_misc()
        if not said_ready and subscribed == count:
            ready.send(count)
            said_ready = True
    results.send(sorted(received.values()))
    for client in clients:
        client.disconnect()


def broker_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_fanout(host: str, port: int, subscribers: int, payload_bytes: int, broker_pid: int,
                   processes: int = 0, timeout_s: float = 300.0) -> Fanout:
    """Subscribe `subscribers` clients, publish one retained model of `payload_bytes` and time its delivery."""
    processes = processes or max(1, min(os.cpu_count() or 1, subscribers // 250 + 1))
    share = [subscribers // processes + (1 if k < subscribers % processes else 0) for k in range(processes)]
    context = multiprocessing.get_context("fork")
    workers, ready_pipes, result_pipes = [], [], []
    first = 0
    for count in share:
        ready_recv, ready_send = context.Pipe(duplex=False)
        result_recv, result_send = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=(host, port, count, first, ready_send, result_send, timeout_s),
                                 daemon=True)
        worker.start()
        workers.append(worker)
        ready_pipes.append(ready_recv)
        result_pipes.append(result_recv)
        first += count
    for pipe in ready_pipes:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"the fan-out subscribers did not all subscribe within {timeout_s:g} s")
        pipe.recv()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fanout-publisher")
    publisher.connect(host, port)
    publisher.loop_start()
    payload = os.urandom(payload_bytes)
    started = time.time()
    publisher.publish(TOPIC, payload, qos=1, retain=True).wait_for_publish(timeout_s)
    times: list[float] = []
    for pipe in result_pipes:
        if pipe.poll(timeout_s):
            times.extend(pipe.recv())
    publisher.publish(TOPIC, b"", qos=1, retain=True).wait_for_publish(30)   # clear the retained model
    publisher.loop_stop()
    publisher.disconnect()
    for worker in workers:
        worker.join(10)
        if worker.is_alive():
            worker.terminate()
    if len(times) < subscribers:
        raise TimeoutError(f"only {len(times)} of {subscribers} subscribers got the model within {timeout_s:g} s")
    delays = sorted(t - started for t in times)
    return Fanout(subscribers, payload_bytes, delays[0], delays[len(delays) // 2], delays[-1], broker_hwm(broker_pid))


@dataclass(frozen=True)
class Backlog:
    updates: int
    payload_bytes: int
    broker_rss_before: int
    broker_rss_after: int

    def text(self) -> str:
        grown = self.broker_rss_after - self.broker_rss_before
        return (f"{self.updates:,} updates of {self.payload_bytes / 1e6:.1f} MB waiting for one subscriber that "
                f"does not read: Mosquitto RSS {self.broker_rss_before / 1e6:,.0f} -> "
                f"{self.broker_rss_after / 1e6:,.0f} MB ({grown / max(1, self.updates) / 1e6:.2f} MB per update)")


def broker_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_backlog(host: str, port: int, updates: int, payload_bytes: int, broker_pid: int) -> Backlog:
    """What a backlog of QoS 1 updates for a slow coordinator costs the broker: one subscriber to u/# stops reading,
    a publisher sends `updates` messages of `payload_bytes` (each acknowledged), then Mosquitto's RSS is read."""
    slow = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="backlog-coordinator")
    slow.connect(host, port, keepalive=600)
    slow.subscribe("u/#", qos=1)
    for _ in range(20):                      # CONNACK and SUBACK, then this client reads nothing more
        slow.loop(0.05)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="backlog-devices")
    publisher.connect(host, port)
    publisher.loop_start()
    before = broker_rss(broker_pid)
    payload = os.urandom(payload_bytes)
    for k in range(updates):
        publisher.publish(f"u/{k}", payload, qos=1).wait_for_publish(30)
    time.sleep(1.0)
    after = broker_rss(broker_pid)
    publisher.loop_stop()
    publisher.disconnect()
    slow.disconnect()
    return Backlog(updates, payload_bytes, before, after)
