"""One MQTT connection for a coordinator or client: paho-mqtt 2.x with reconnects, resubscription,
a last will, and a callback per received message."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from federation.config.settings import tls_problem
from federation.errors import FedmqError
from federation.transport.broker_address import (DEFAULT_WS_PATH, Transport, AddressError, format_address, parse_address,
                                                 split_addresses)
from federation.transport.connect_diagnosis import GET_CREDENTIALS, diagnose
from federation.transport.reconnect_jitter import ReconnectJitter

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained
# CONNACK reason codes meaning "not you" (paho maps MQTT 3.1.1's 4 and 5 to 134 and 135; 138 = banned).
_LOGIN_REFUSED = frozenset({134, 135, 138})
_UNSUPPORTED_PROTOCOL = frozenset({1, 132})  # MQTT 3.1.1's and MQTT 5's "unacceptable protocol version"
_RESUBSCRIBE_DELAY_S = 1.0
# On a clustered broker, seconds after each connect at which the wildcard filters (and our own will's topic) are
# subscribed again: NATS copies
# retained messages between nodes asynchronously, so one published on another node while we subscribed can be
# missed (a birth the coordinator never sees); a repeated SUBSCRIBE delivers the retained messages again, and
# loses nothing in flight (bench/nats_mqtt_checks.py).
SECOND_LOOKS_S = (3.0, 15.0)
LOOK_AGAIN_EVERY_S = 30.0   # ...and then this often while the connection lasts: a copy later still is seen then


class CredentialsError(FedmqError, ValueError):
    """A TLS or login file that is missing, unreadable or inconsistent; the message names it."""


class BrokerRefusedError(FedmqError, RuntimeError):
    """The broker refused our login (wrong or revoked credentials, or not authorized)."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "localhost"
    port: int = 1883
    mqtt_version: str = "3.1.1"
    keepalive_s: int = 30
    tls_ca: str = ""          # CA certificate file: use TLS and verify the broker against it ("" = plain MQTT)
    tls_cert: str = ""        # client certificate file for mutual TLS (with tls_key)
    tls_key: str = ""
    username: str = ""
    password_file: str = ""   # the password is read from this file by MqttLink, never passed around
    transport: Transport = "tcp"    # or "websockets" (ws:// and wss:// addresses)
    tls: bool = False         # TLS even without tls_ca (mqtts:// and wss://): verified against the system's CAs
    ws_path: str = DEFAULT_WS_PATH
    alternates: tuple[tuple[str, int], ...] = ()
    """Other nodes of a clustered broker, (host, port), same scheme: tried in turn when a connection drops or fails."""

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """Every node to try, this address's first."""
        return [(self.host, self.port), *self.alternates]

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.tls_ca)

    @property
    def url(self) -> str:
        scheme = ("wss" if self.use_tls else "ws") if self.transport == "websockets" else \
            ("mqtts" if self.use_tls else "mqtt")
        return format_address(self.host, self.port, scheme, self.ws_path if self.transport == "websockets" else "")

    def __str__(self) -> str:
        scheme, rest = self.url.split("://", 1)
        user = f"{self.username}@" if self.username else ""
        more = f", +{len(self.alternates)} more node(s)" if self.alternates else ""
        return f"{scheme}://{user}{rest} (MQTT {self.mqtt_version}{more})"

    def at_node(self, index: int) -> "BrokerAddress":
        """This address with node `index` of `nodes` as its host and port (the alternates kept)."""
        host, port = self.nodes[index % len(self.nodes)]
        return replace(self, host=host, port=port)

    @classmethod
    def parse(cls, text: str, defaults: "BrokerAddress | None" = None, port_flag: int | None = None) -> "BrokerAddress":
        """`text` in any form of federation.transport.broker_address.FORMS, the other fields from `defaults`. The port:
        see ParsedAddress.choose_port (`defaults.port` is [broker] port). AddressError (a ValueError) names
        what is wrong, also a plain mqtt:// or ws:// address given with a CA certificate for TLS.
        A comma-separated list gives the nodes of a clustered broker: the first is `host`, the rest `alternates`;
        every node has the same scheme (TLS and transport)."""
        base = defaults or cls()
        first, *others = split_addresses(text)
        address = cls._parse_one(first, base, port_flag)
        alternates = []
        for other in others:  # --port: the port of the nodes that give none
            node = cls._parse_one(other, replace(base, port=port_flag or base.port), None)
            if (node.transport, node.use_tls, node.ws_path) != (address.transport, address.use_tls, address.ws_path):
                raise AddressError(f"broker node {other!r} is reached as {node.url.split('://')[0]}:// but "
                                   f"{first!r} as {address.url.split('://')[0]}://: give every node of one broker "
                                   "the same scheme")
            alternates.append((node.host, node.port))
        return replace(address, alternates=tuple(alternates))

    @classmethod
    def _parse_one(cls, text: str, base: "BrokerAddress", port_flag: int | None) -> "BrokerAddress":
        parsed = parse_address(text)
        if parsed.scheme in ("mqtt", "ws") and base.tls_ca:
            raise AddressError(f"{parsed.scheme}:// is plain MQTT, but a CA certificate ({base.tls_ca}) asks for "
                               f"TLS: write {parsed.scheme}s://{text.split('://', 1)[1]}")
        return replace(base, host=parsed.host, port=parsed.choose_port(port_flag, base.port),
                       transport=parsed.transport, tls=parsed.tls,
                       ws_path=parsed.path or DEFAULT_WS_PATH, alternates=())

    @classmethod
    def from_settings(cls, broker: object) -> "BrokerAddress":
        """From federation.config.settings.BrokerSettings (any object with the same attribute names); its host may be
        any address form (mqtts://broker.lan)."""
        fields = {name: getattr(broker, name) for name in cls.__dataclass_fields__ if hasattr(broker, name)}
        return cls.parse(fields.pop("host", "localhost"), cls(**fields))


def read_password(path: str) -> str:
    """The first line of `path`; CredentialsError naming the file if it is missing or empty."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
        mode = os.stat(Path(path).expanduser()).st_mode
    except OSError as exc:
        raise CredentialsError(f"password file {path} can't be read: {exc.strerror or exc}") from None
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise CredentialsError(f"password file {path} is empty")
    if mode & 0o077:
        log.warning("password file %s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777)
    return password


def configure_security(client: mqtt.Client, address: BrokerAddress) -> None:
    """Set TLS and the login on a paho client; CredentialsError names a missing or unusable file."""
    if problem := tls_problem(address.tls_cert, address.tls_key, address.tls_ca):
        raise CredentialsError(problem)
    if address.password_file and not address.username:
        raise CredentialsError("a password file needs a username (--username)")
    if address.use_tls:
        for what, path in (("CA certificate", address.tls_ca), ("client certificate", address.tls_cert),
                           ("client key", address.tls_key)):
            if path and not Path(path).expanduser().is_file():
                raise CredentialsError(f"{what} file {path} does not exist")
        try:  # without tls_ca (mqtts:// alone): the system's CA certificates
            client.tls_set(ca_certs=str(Path(address.tls_ca).expanduser()) if address.tls_ca else None,
                           certfile=str(Path(address.tls_cert).expanduser()) if address.tls_cert else None,
                           keyfile=str(Path(address.tls_key).expanduser()) if address.tls_key else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise CredentialsError(f"TLS files unusable (CA {address.tls_ca}, certificate "
                                   f"{address.tls_cert or '-'}, key {address.tls_key or '-'}): {exc}") from None
    if address.username:
        password = read_password(address.password_file) if address.password_file else None
        client.username_pw_set(address.username, password)


class MqttLink:
    """A paho client that reconnects with backoff and re-runs `on_connected` after every (re)connect."""

    def __init__(self, client_id: str, address: BrokerAddress, subscriptions: list[tuple[str, int]],
                 on_message: MessageHandler, will: tuple[str, bytes] | None = None,
                 on_connected: Callable[[], None] | None = None,
                 reconnect_jitter: ReconnectJitter | None = None, receive_maximum: int = 0) -> None:
        self.client_id = client_id
        self.receive_maximum = receive_maximum   # MQTT 5: unacknowledged QoS 1 messages the broker may send us
        self.address = address     # the node in use: address.at_node(k) of the one given
        self._given = address
        self._node = 0
        self._asked: dict[int, list[tuple[str, int]]] = {}   # SUBSCRIBE packet id -> its topics, until its SUBACK
        self._connections = 0      # CONNACKs so far: a second look belongs to the connection it was planned on
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        self.connected = threading.Event()
        self._stopping = False
        protocol = mqtt.MQTTv5 if address.mqtt_version == "5" else mqtt.MQTTv311
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": True}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                   transport=address.transport, **kwargs)
        if address.transport == "websockets":
            self._client.ws_set_options(path=address.ws_path)
        configure_security(self._client, address)
        self.refused: str | None = None   # why the broker refused our login, once it did
        self.on_refused: Callable[[], None] | None = None  # called (paho's thread) when that happens
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._jitter = reconnect_jitter   # randomized delays instead of paho's fixed doubling (a fleet's devices)
        self._client.max_queued_messages_set(0)
        if will:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._will_topic = will[0] if will else None
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self.failure = ""             # why the last attempt failed, with the fix (federation.transport.connect_diagnosis)
        self._connack_seen = False    # this attempt got an answer from the broker (accepted or refused)
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        log.info("%s connecting to %s", self.client_id, self.address)
        self._client.connect_async(self.address.host, self.address.port, keepalive=self.address.keepalive_s,
                                   properties=self._connect_properties())
        self._client.loop_start()

    def _connect_properties(self) -> Properties | None:
        """MQTT 5's CONNECT Receive Maximum, when set: the broker holds the rest in its queue for us."""
        if self.address.mqtt_version != "5" or not self.receive_maximum:
            return None
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = self.receive_maximum
        return properties

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
        self._connack_seen = True
        if reason_code.is_failure:
            if reason_code.value in _UNSUPPORTED_PROTOCOL and self.address.mqtt_version == "5":
                self.failure = (f"the broker at {self.address.url} does not speak MQTT 5 ({reason_code}); NATS and "
                                "amqtt speak MQTT 3.1.1 only: set [broker] mqtt_version = \"3.1.1\" "
                                "(--mqtt-version 3.1.1), which fedmq's protocol needs nothing beyond")
                log.error("%s: %s", self.client_id, self.failure)
                self._next_node()
            elif reason_code.value in _LOGIN_REFUSED:
                self.refused = str(reason_code)
                if self.address.username:
                    self.failure = (f"the broker at {self.address.url} refused the login of "
                                    f"{self.address.username!r} ({reason_code}): a wrong or revoked password, or a "
                                    "username it does not know; check --username and --password-file, or make the "
                                    f"login with {GET_CREDENTIALS}")
                else:
                    self.failure = (f"the broker at {self.address.url} requires a login ({reason_code}): give "
                                    f"--username and --password-file, made by {GET_CREDENTIALS}")
                log.error("%s: %s", self.client_id, self.failure)
                if self.on_refused:
                    self.on_refused()
            else:
                log.error("%s: broker refused the connection: %s", self.client_id, reason_code)
            return
        log.info("%s connected to %s", self.client_id, self.address)
        if self._jitter is not None:
            self._jitter.connected()
        self.failure = ""
        if self._subscriptions:
            self._subscribe(self._subscriptions)
        self._connections += 1
        self.connected.set()  # before the looks' timers: on a loaded machine a short one can fire at once
        # The wildcard filters (births, updates), and our own presence topic: a late copy of an old will of ours
        # would otherwise say "offline" there for good, unseen by us (found by the failover test in CI).
        looks = [sub for sub in self._subscriptions if "+" in sub[0] or "#" in sub[0] or sub[0] == self._will_topic]
        if self._given.alternates and looks:
            for k, delay in enumerate(SECOND_LOOKS_S):
                timer = threading.Timer(delay, self._second_look,
                                        (self._connections, looks, k == len(SECOND_LOOKS_S) - 1))
                timer.daemon = True
                timer.start()
        if self._on_connected:
            self._on_connected()

    def _handle_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._report_failure()
        self._next_node()
        self._jitter_next_retry()

    def _next_node(self) -> None:
        """Point paho's next reconnect at the next node of a clustered broker (no-op with one address)."""
        if not self._given.alternates or self._stopping:
            return
        self._node = (self._node + 1) % len(self._given.nodes)
        self.address = self._given.at_node(self._node)
        # paho's host/port setters refuse while a lost connection is being torn down; its reconnect reads these.
        self._client._host, self._client._port = self.address.host, self.address.port
        log.info("%s: next broker node %s", self.client_id, self.address.url)

    def _handle_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                          reason_codes: list[mqtt.ReasonCode], properties: object) -> None:
        """A refused subscription would silently starve us. A cluster node refuses one while its cluster re-elects
        leaders after a node died: ask it again until it is granted. One broker refuses for good: say so."""
        refused = [sub for sub, code in zip(self._asked.pop(mid, []), reason_codes) if code.is_failure]
        if refused and not self._given.alternates:  # one broker refuses for good: its ACL
            log.error("%s: the broker refused the subscription to %s: its ACL does not allow this login to read "
                      "there", self.client_id, ", ".join(topic for topic, _ in refused))
        elif refused and not self._stopping and self.connected.is_set():
            log.warning("%s: the broker refused the subscription to %s; asking again in %.0f s", self.client_id,
                        ", ".join(topic for topic, _ in refused), _RESUBSCRIBE_DELAY_S)
            timer = threading.Timer(_RESUBSCRIBE_DELAY_S, self._resubscribe, (refused,))
            timer.daemon = True
            timer.start()

    def _second_look(self, connection: int, topics: list[tuple[str, int]], last: bool = False) -> None:
        """Subscribe again to `topics` if connection number `connection` is still the current one; after the last
        of SECOND_LOOKS_S, again every LOOK_AGAIN_EVERY_S while it lasts."""
        if connection != self._connections or self._stopping:
            return
        log.debug("%s: subscribing again to %s for retained messages copied late between nodes",
                  self.client_id, ", ".join(topic for topic, _ in topics))
        self._resubscribe(topics)
        if last:
            timer = threading.Timer(LOOK_AGAIN_EVERY_S, self._second_look, (connection, topics, True))
            timer.daemon = True
            timer.start()

    def _resubscribe(self, topics: list[tuple[str, int]]) -> None:
        if not self._stopping and self.connected.is_set():
            self._subscribe(topics)

    def _subscribe(self, topics: list[tuple[str, int]]) -> None:
        _, mid = self._client.subscribe(topics)
        if mid is not None:
            self._asked[mid] = topics

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                           reason_code: mqtt.ReasonCode, properties: object) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("%s disconnected (%s); reconnecting", self.client_id, reason_code)
        elif not self._connack_seen and not self._stopping:  # closed before any answer: e.g. plain MQTT on TLS
            self._report_failure()
        self._connack_seen = False
        self.connected.clear()
        self._next_node()
        self._jitter_next_retry()

    def _jitter_next_retry(self) -> None:
        """Set paho's next reconnect delay to a random one (it waits its min_delay first after this call)."""
        if self._jitter is not None and not self._stopping:
            delay = self._jitter.next_delay()   # paho accepts any number of seconds; its signature says int
            self._client.reconnect_delay_set(min_delay=cast(int, delay), max_delay=cast(int, self._jitter.cap_s))

    def _report_failure(self) -> None:
        """Find out why the attempt failed; log it when it is news (paho retries every few seconds)."""
        try:
            failure = diagnose(self.address)
        except Exception as exc:  # never let a diagnosis kill paho's thread
            failure = f"can't reach {self.address} ({exc})"
        if self._given.alternates:
            failure += ("; on a clustered broker a node also closes connections while its cluster elects leaders "
                        "after a node's death, so the next node is tried")
        if failure != self.failure:
            log.warning("%s: %s; retrying", self.client_id, failure)
        self.failure = failure

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            self._on_message(msg.topic, payload, bool(msg.retain))
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("%s: error handling a message on %s", self.client_id, msg.topic)
