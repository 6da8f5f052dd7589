"""What every test tier shares: the repository root, one wait helper, and one MQTT probe client.

Imports nothing heavy at module level (no paho until a probe is made): unit tests import it too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 180.0, *, log: Path | None = None,
             interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy, and return that. A predicate that raises OSError or
    ValueError (a server not up yet, a log file not written yet) counts as not yet. After `timeout` seconds:
    AssertionError naming `what`, the last such error, and the tail of `log` if given."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (OSError, ValueError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log and log.is_file() else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}\n{tail}".rstrip())


def connect_probe(port: int, client_id: str, *, host: str = "127.0.0.1", protocol: int | None = None,
                  transport: str = "tcp", setup: Callable[[mqtt.Client], None] | None = None) -> mqtt.Client:
    """A plain paho client (callback API 2) connected to the broker at host:port, its network loop running.
    `setup` runs before connecting (callbacks, in-flight window). Close it with close_probe."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311 if protocol is None else protocol,
                         transport="websockets" if transport == "websockets" else "tcp")
    if setup is not None:
        setup(client)
    client.connect(host, port)
    client.loop_start()
    return client


def close_probe(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


@contextmanager
def probe_client(port: int, client_id: str, **options: Any) -> Iterator[mqtt.Client]:
    """connect_probe as a context manager: disconnected at the end."""
    client = connect_probe(port, client_id, **options)
    try:
        yield client
    finally:
        close_probe(client)


def retained_messages(port: int, topic_filter: str, wait_s: float = 2.0) -> dict[str, bytes]:
    """Every retained message under `topic_filter` on the broker at 127.0.0.1:port."""
    found: dict[str, bytes] = {}
    subscribed = threading.Event()

    def setup(client: mqtt.Client) -> None:
        client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = lambda c, u, msg: found.__setitem__(msg.topic, msg.payload) if msg.retain else None

    with probe_client(port, "test-retained-probe", setup=setup):
        assert subscribed.wait(10), "probe could not subscribe"
        time.sleep(wait_s)
    return found
