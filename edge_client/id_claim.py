"""Two live processes must not share a client id: the broker would drop each whenever the other connects. Before
its real connection a client reads its own retained status with a throwaway MQTT client id and steps back if the
id is online in another process (`instance`, a random token per process, tells processes apart)."""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from federation.errors import FedmqError
from edge_client.client import INSTANCE  # this process, in the `device` map of its status messages
from federation.protocol.codec import DecodeError
from federation.protocol.messages import ClientStatus, decode_message
from federation.transport.mqtt_link import BrokerAddress, configure_security

log = logging.getLogger(__name__)

EXIT_ID_IN_USE = 5
_SETTLE_S = 10.0   # connect and subscribe within this long, or give up checking


class ClientIdInUseError(FedmqError, RuntimeError):
    """Another live process is online under this client id; the message names it and the fix."""


@dataclass(frozen=True)
class Holder:
    """Who holds a client id, from its retained status."""

    host: str
    pid: str
    instance: str

    @classmethod
    def of(cls, status: ClientStatus) -> "Holder":
        device = status.device if isinstance(status.device, dict) else {}
        # Capped: anyone who may publish on the status topic chooses these strings.
        return cls(str(device.get("host", "?"))[:64], str(device.get("pid", "?"))[:16],
                   str(device.get("instance", ""))[:64])

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}"


def other_holder(payload: bytes, max_payload: int) -> Holder | None:
    """The holder named by a retained status payload if it is online and another process, else None."""
    if not payload:
        return None
    try:
        status = decode_message(payload, max_payload)
    except DecodeError:
        return None
    if not isinstance(status, ClientStatus) or status.status != "online":
        return None
    holder = Holder.of(status)
    return holder if holder.instance != INSTANCE else None


def ensure_client_id_free(address: BrokerAddress, status_topic: str, client_id: str, max_payload: int) -> None:
    """Return once no other live process is online as `client_id`; ClientIdInUseError if one stays online for
    1.5 x keepalive (a device that lost power stays `online` until the broker gives up on it after that long).
    When the broker can't be reached the check is skipped: the client's own connection reports why."""
    messages: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    protocol = mqtt.MQTTv5 if address.mqtt_version == "5" else mqtt.MQTTv311
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-probe-{secrets.token_hex(4)}",
                        protocol=protocol, transport=address.transport)
    if address.transport == "websockets":
        probe.ws_set_options(path=address.ws_path)
    configure_security(probe, address)
    marker = f"{status_topic}/probe-{secrets.token_hex(4)}"  # subscribed second: its SUBACK follows the retained
    first: list[int] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        if not rc.is_failure:
            mid = client.subscribe(status_topic, qos=1)[1]
            if mid is not None:
                first.append(mid)

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object) -> None:
        if first and mid == first[0]:
            client.subscribe(marker, qos=0)
        else:
            subscribed.set()

    probe.on_connect = on_connect
    probe.on_subscribe = on_subscribe
    probe.on_message = lambda c, u, msg: messages.put(bytes(msg.payload)) if msg.topic == status_topic else None
    for host, port in address.nodes:  # a clustered broker: the first node that answers
        try:
            probe.connect(host, port, keepalive=address.keepalive_s)
            break
        except (OSError, ValueError) as exc:
            log.debug("could not check whether client id %r is free on %s:%s: %s", client_id, host, port, exc)
    else:
        return
    probe.loop_start()
    try:
        if not subscribed.wait(_SETTLE_S):
            log.debug("could not check whether client id %r is free: no answer to the subscription", client_id)
            return
        holder = _last_holder(messages, max_payload)
        if holder is None:
            return
        wait_s = 1.5 * address.keepalive_s
        log.warning("client id %r is online already (%s); waiting up to %.0f s for it to go offline (a device that "
                    "lost power stays online that long)", client_id, holder, wait_s)
        deadline = time.monotonic() + wait_s
        while holder is not None and (left := deadline - time.monotonic()) > 0:
            try:
                holder = other_holder(messages.get(timeout=left), max_payload)
            except queue.Empty:
                break
        if holder is not None:
            raise ClientIdInUseError(
                f"client id {client_id!r} is already online in another process ({holder}); two processes with one "
                f"id knock each other off the broker. Give this one another --client-id, or stop the other")
        log.info("client id %r is free now", client_id)
    finally:
        probe.disconnect()
        probe.loop_stop()


def _last_holder(messages: queue.Queue[bytes], max_payload: int) -> Holder | None:
    holder = None
    while not messages.empty():
        holder = other_holder(messages.get_nowait(), max_payload)
    return holder
