"""One MQTT connection for a coordinator or client: paho-mqtt 2.x with reconnects, resubscription,
a last will, and a callback per received message."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "localhost"
    port: int = 1883
    mqtt_version: str = "3.1.1"
    keepalive_s: int = 30

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port} (MQTT {self.mqtt_version})"


class MqttLink:
    """A paho client that reconnects with backoff and re-runs `on_connected` after every (re)connect."""

    def __init__(self, client_id: str, address: BrokerAddress, subscriptions: list[tuple[str, int]],
                 on_message: MessageHandler, will: tuple[str, bytes] | None = None,
                 on_connected: Callable[[], None] | None = None) -> None:
        self.client_id = client_id
        self.address = address
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        self.connected = threading.Event()
        self._stopping = False
        protocol = mqtt.MQTTv5 if address.mqtt_version == "5" else mqtt.MQTTv311
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": True}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_queued_messages_set(0)
        if will:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        log.info("%s connecting to %s", self.client_id, self.address)
        self._client.connect_async(self.address.host, self.address.port, keepalive=self.address.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_and_wait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                         timeout: float = 30.0) -> bool:
        """Publish and wait until the broker acknowledged it (QoS 1) or `timeout` passed."""
        info = self.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("%s: publish on %s not confirmed: %s", self.client_id, topic, exc)
            return False
        return info.is_published()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: object,
                        reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.client_id, reason_code)
            return
        log.info("%s connected to %s", self.client_id, self.address)
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        self.connected.set()
        if self._on_connected:
            self._on_connected()

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                           reason_code: mqtt.ReasonCode, properties: object) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("%s disconnected (%s); reconnecting", self.client_id, reason_code)
        self.connected.clear()

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("%s: error handling a message on %s", self.client_id, msg.topic)
