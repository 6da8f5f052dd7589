"""The coordinator's MQTT node: its link and subscriptions, the admission checks and the bounded inbox behind them,
and its own retained topics (state, global model, metrics, run end), re-published after a reconnect or a forgery.

It knows topics and payloads, not rounds: the engine hands it encoded messages and takes Inbound messages out.

Flow control: the inbox holds at most `inbox_messages` undecoded payloads ([broker] inbox_messages, inbox_mb). When
it is full, paho's network thread waits in `_on_message` and acknowledges nothing more; with MQTT 5 the CONNECT
Receive Maximum (= inbox_messages) keeps the broker from sending more than that many unacknowledged QoS 1 messages,
so the rest stay queued in Mosquitto for this client (they count against its max_queued_messages, which must hold
a round's updates and the fleet's births: broker/mosquitto.conf). With MQTT 3.1.1 there is no Receive Maximum:
Mosquitto's max_inflight_messages (default 20) bounds what is in flight to us, then TCP holds the rest back, and
again Mosquitto queues them. Nothing is dropped here; the coordinator's own publishes go through paho's in-flight
window (max_inflight_messages, 20) and wait in paho's queue behind it."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

from coordinator import final_publish
from coordinator.admission import Admission
from coordinator.intake import STATUS_MAX_BYTES
from federation.protocol.chunked_transfer import base_topic, chunk_topic
from federation.transport.inbox import Inbound, Inbox
from federation.transport.mqtt_link import BrokerAddress, BrokerRefusedError, MqttLink
from federation.protocol.topics import RunTopics

log = logging.getLogger(__name__)

INBOX_MESSAGES = 32                # [broker] inbox_messages: undecoded payloads held at most ...
INBOX_BYTES = 64 * 1024 * 1024     # ... and their bytes ([broker] inbox_mb); a full inbox slows the broker down
_OWN_TOPIC_MEMORY = 16             # recent payloads per own topic, to tell our echo from a forgery


class CoordinatorNode:
    """One MQTT connection for the coordinator. Paho's network thread only runs `_on_message` (cheap checks, then
    the inbox) and `_on_connected` (re-publish the retained topics); everything else runs on the engine's thread."""

    def __init__(self, topics: RunTopics, address: BrokerAddress, client_id: str, max_payload: int,
                 state_payload: bytes, will_payload: bytes, inbox_messages: int = INBOX_MESSAGES,
                 inbox_bytes: int = INBOX_BYTES) -> None:
        self.topics = topics
        self.max_payload = max_payload
        self.inbox = Inbox(inbox_bytes, inbox_messages)
        self.admission: Admission | None = None   # set by the engine once the model's size is known
        self.closing = False                      # set at the end of the run: incoming messages are no longer read
        self._state_payload = state_payload       # the retained state, re-published after every (re)connect
        # The open round's model as published (maybe chunked); re-published after a reconnect.
        self.global_messages: list[tuple[str, bytes]] = []
        self.chunk_topics_used = 0
        self._metrics_payload = b""  # the last round's metrics (retained), re-published likewise
        # What this coordinator published on its own retained topics: sha256 of recent payloads, to notice
        # messages there that it did not publish (the open profile has no logins) and re-publish its own.
        self._own: dict[str, list[bytes]] = {}
        self._own_current: dict[str, tuple[bytes, bool]] = {}
        self._forgery_fixed_at: dict[str, float] = {}
        self.link = MqttLink(
            client_id=client_id, address=address,
            subscriptions=[(topics.updates_wildcard, 1), (chunk_topic(topics.updates_wildcard, "+"), 1),
                           (topics.statuses_wildcard, 1), (topics.global_model, 1),
                           (topics.relay_statuses_wildcard, 1), (topics.relay_updates_wildcard, 1),
                           (chunk_topic(topics.relay_updates_wildcard, "+"), 1),
                           (topics.run_end, 1), (topics.coordinator_state, 1)],
            on_message=self._on_message, will=(topics.coordinator_state, will_payload),
            on_connected=self._on_connected, receive_maximum=inbox_messages,
        )

    @property
    def address(self) -> BrokerAddress:
        return self.link.address

    # ---- paho's network thread ---------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """The cheap checks, then the bounded inbox."""
        admission = self.admission
        if admission is not None and topic.startswith(self.topics.base + "/update/"):
            client_id = self.topics.client_of(base_topic(topic)[0]) or topic
            if admission.admit(client_id, len(payload)) is not None:
                return  # counted by admission; logged and reported by the engine's thread
        elif len(payload) > max(STATUS_MAX_BYTES, self.max_payload if topic == self.topics.global_model
                                or self.topics.site_of(topic) else 0):   # a relay's status or partial: one per site
            return
        item = Inbound(topic, payload, retained)
        while not self.inbox.put(item, timeout=1.0):  # full: hold the broker back (it queues for us)...
            if self.closing:                          # ...unless the run is over and nobody will read it
                return

    def _on_connected(self) -> None:
        """After every (re)connect: restore the retained state and the open round's model (a restarted broker
        without persistence has lost them)."""
        self._remember_own(self.topics.coordinator_state, self._state_payload)
        self.link.publish(self.topics.coordinator_state, self._state_payload, qos=1, retain=True)
        for topic, part in list(self.global_messages):
            self.link.publish(topic, part, qos=1, retain=True)
        if self._metrics_payload:
            self.link.publish(self.topics.metrics, self._metrics_payload, qos=1, retain=True)

    # ---- the engine's thread -----------------------------------------------------------------------------------

    def connect(self) -> None:
        """Start the link and wait for the broker; BrokerRefusedError if it refuses the login."""
        self.link.start()
        while not self.link.wait_connected(10):
            if self.link.refused:
                self.link.stop()
                raise BrokerRefusedError(f"the broker at {self.link.address} refused the coordinator's login: "
                                         f"{self.link.refused}")
            log.warning("still waiting for the MQTT broker at %s", self.link.address)

    def next(self, timeout: float) -> Inbound | None:
        return self.inbox.get(timeout)

    def is_own_topic(self, topic: str) -> bool:
        return topic in (self.topics.global_model, self.topics.run_end, self.topics.coordinator_state)

    def _remember_own(self, topic: str, payload: bytes) -> None:
        recent = self._own.setdefault(topic, [])
        recent.append(hashlib.sha256(payload).digest())
        del recent[:-_OWN_TOPIC_MEMORY]

    def publish_own(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Publish on one of this coordinator's retained topics, remembering the payload so that a message there
        that it did not publish can be noticed and replaced."""
        self._remember_own(topic, payload)
        self._own_current[topic] = (payload, retain)
        self.link.publish(topic, payload, qos=1, retain=retain)

    def check_own_topic(self, topic: str, payload: bytes) -> None:
        """A message on the model, end or state topic: ours coming back, or one this coordinator did not publish
        (a forgery on a broker without logins, or a stale will): then re-publish our own."""
        current = self._own_current.get(topic)
        if current is None or hashlib.sha256(payload).digest() in self._own.get(topic, []):
            return
        now = time.monotonic()
        if now - self._forgery_fixed_at.get(topic, -1e9) >= 1.0:
            self._forgery_fixed_at[topic] = now
            log.warning("a message on %s that this coordinator did not publish (%d bytes); re-publishing its own",
                        topic, len(payload))
            self.publish_own(topic, *current)

    def publish_state(self, payload: bytes) -> None:
        """Publish the retained state; the payload is kept for re-publishing after a reconnect."""
        self._state_payload = payload
        self.publish_own(self.topics.coordinator_state, payload)

    def publish_metrics(self, payload: bytes) -> None:
        """Retain the last round's metrics (an empty payload while the run has no closed round)."""
        self._metrics_payload = payload
        self.link.publish(self.topics.metrics, payload, qos=1, retain=True)

    def publish_global(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish (and keep, for reconnects) the open round's model: one message, or chunks and a manifest."""
        self.global_messages = messages
        self.chunk_topics_used = max(self.chunk_topics_used, len(messages) - 1)
        for topic, part in messages:
            self.publish_own(topic, part)

    def forget_global(self) -> None:
        self.global_messages = []

    def clear_run_end(self) -> None:
        """Forget a previous run's end."""
        self.publish_own(self.topics.run_end, b"")

    def publish_final(self, before: Sequence[tuple[str, bytes]], run_end: bytes,
                      offline_state: bytes) -> tuple[list[str], float]:
        """The last publishes, each confirmed (re-sent after a reconnect, within final_publish.timeout_s()): `before`
        (an unconfirmed deployment), the run's end, the cleared global model and its chunks, the offline state.
        Then the link stops. Returns the topics left unconfirmed and the bound used."""
        self._remember_own(self.topics.run_end, run_end)  # ours: a forged run_end would be replaced
        final = [*before, (self.topics.run_end, run_end), (self.topics.global_model, b""),
                 *[(chunk_topic(self.topics.global_model, i), b"") for i in range(self.chunk_topics_used)],
                 (self.topics.coordinator_state, offline_state)]
        bound = final_publish.timeout_s()
        unconfirmed = final_publish.publish_confirmed(self.link, final, bound)
        self.link.stop()
        return unconfirmed, bound
