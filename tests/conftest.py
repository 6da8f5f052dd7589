"""Shared fixtures: a real Mosquitto on a free port, and a local federation of real processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from broker import MosquittoProcess
from demo.local_federation import LocalFederation


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(workdir=tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A LocalFederation whose broker is started; every process is stopped at the end."""
    fed = LocalFederation(tmp_path / "fed", run_name="it")
    try:
        fed.start_broker()
        yield fed
    finally:
        fed.stop()


def retained_messages(port: int, topic_filter: str, wait_s: float = 2.0) -> dict[str, bytes]:
    """Every retained message under `topic_filter` on the broker at 127.0.0.1:port."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    found: dict[str, bytes] = {}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-retained-probe")
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, u, msg: found.__setitem__(msg.topic, msg.payload) if msg.retain else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10), "probe could not subscribe"
        import time

        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return found
