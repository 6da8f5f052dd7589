"""One simulated device: its own MQTT connection (client id `fedmq-client-<id>`, clean session, retained last will),
its birth after every CONNACK, the run's model, state and end topics, and for each round it is asked to train a timer
instead of training, then a real update; re-sends on a model offered again, failures, reconnects, offline at the end.

Everything runs on the process's one event loop (event_loop.py); the rules come from decisions.py."""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_client.simulator.counts import SimCounts
from edge_client.run_end_watch import RunEndWatch
from edge_client.simulator.decisions import ModelAction, SentRecord, abandons_training, model_action
from edge_client.simulator.event_loop import EventLoop, Timer
from edge_client.simulator.schedule import connect_delay, failure, num_examples, reconnect_delay, train_seconds
from edge_client.simulator.settings import SimulationSettings
from edge_client.simulator.shared_messages import SharedMessages
from edge_client.simulator.update_maker import update_messages
from federation.protocol.chunked_transfer import chunk_topic
from federation.protocol.codec import DecodeError
from federation.protocol.messages import ClientStatus, CoordinatorState, GlobalModel, RunEnd, decode_message
from federation.protocol.topics import RunTopics
from federation.protocol.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)
LEAVE_TIMEOUT_S = 5.0       # at run_end: wait this long for the offline status's PUBACK, then disconnect anyway
REANNOUNCE_EVERY_S = 1.0    # PROTOCOL.md: a device re-publishes its birth at most once a second


@dataclass
class FleetContext:
    """What the devices of one process share: settings, loop, decode cache, counters, topics."""

    settings: SimulationSettings
    loop: EventLoop
    shared: SharedMessages
    counts: SimCounts
    instance: str                  # this process's random token; a device's instance adds its index and incarnation
    topics: RunTopics = field(init=False)
    remaining: int = 0             # devices that have not left yet
    base_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = RunTopics(self.settings.topic_prefix, self.settings.run)
        self.base_info = {"host": socket.gethostname(), "machine": platform.machine(),
                          "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
                          "python": platform.python_version(), "cpu_count": os.cpu_count() or 0, "pid": os.getpid(),
                          "simulated": True}


@dataclass
class _Training:
    model: GlobalModel
    train_s: float
    timer: Timer


class SimDevice:
    def __init__(self, ctx: FleetContext, index: int) -> None:
        self.ctx = ctx
        self.index = index
        s = ctx.settings
        self.client_id = s.device_id(index)
        self.examples = num_examples(s, index)
        self.status_topic = ctx.topics.client_status(self.client_id)
        self.client: mqtt.Client | None = None
        self.incarnation = 0            # deaths so far: each death is a new process on the device
        self.connected = False
        self.connected_before = False   # in this incarnation: a CONNACK came already (the next is a reconnect)
        self.reconnect_attempt = 0
        self.reconnect_timer: Timer | None = None
        self.latest: GlobalModel | None = None
        self.deliveries = 0             # global models delivered (one decoded object may come many times: the cache)
        self.handled_delivery = 0       # the delivery acted on last
        self.pending_transfer = ""      # a chunked model's manifest came, its chunks not all yet
        self.run_end = RunEndWatch()    # the coordinator's last state, this run's model seen, a held run_end
        self.training: _Training | None = None
        self.last: SentRecord | None = None
        self.attempts: Counter[int] = Counter()   # round -> trainings started (a death makes another attempt)
        self.rounds_trained = 0
        self.birth_mids: set[int] = set()
        self.update_mids: dict[int, tuple[int, bool]] = {}   # mid -> (round, is a re-send)
        self.offline_mid = -1
        self.birth_fixed_at = 0.0
        self.leaving = False
        self.done = False

    # ---- connection ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.loop.call_later(connect_delay(self.ctx.settings, self.index), self.connect)

    def _new_client(self) -> mqtt.Client:
        address = self.ctx.settings.broker
        v5 = address.mqtt_version == "5"
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": True}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedmq-client-{self.client_id}",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kwargs)
        client.suppress_exceptions = True   # a bug in one device's callback is logged, not raised into the loop
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, self._status("offline").encode(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.ctx.loop.attach(client)
        return client

    def connect(self) -> None:
        self.reconnect_timer = None
        if self.done or self.leaving:
            return
        address = self.ctx.settings.broker
        try:
            if self.client is None:
                self.client = self._new_client()
                if address.mqtt_version == "5":
                    self.client.connect(address.host, address.port, keepalive=address.keepalive_s, clean_start=True)
                else:
                    self.client.connect(address.host, address.port, keepalive=address.keepalive_s)
            else:
                self.client.reconnect()
        except OSError as exc:
            self.ctx.counts.connect_errors += 1
            log.debug("%s: can't connect to %s: %s", self.client_id, address, exc)
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self.reconnect_timer is not None or self.done or self.leaving:
            return
        delay = reconnect_delay(self.ctx.settings, self.index, self.reconnect_attempt)
        self.reconnect_attempt += 1
        self.reconnect_timer = self.ctx.loop.call_later(delay, self.connect)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is not self.client:
            return
        counts = self.ctx.counts
        if reason_code.is_failure:
            counts.connect_errors += 1
            log.warning("%s: the broker refused the connection: %s", self.client_id, reason_code)
            return   # the broker closes it; _on_disconnect schedules the next attempt
        self.connected = True
        counts.connected += 1
        counts.connects += 1
        if self.connected_before:
            counts.reconnects += 1
        elif self.incarnation > 0:
            counts.rejoins += 1
        self.connected_before = True
        self.reconnect_attempt = 0
        t = self.ctx.topics
        client.subscribe([(t.global_model, 1), (chunk_topic(t.global_model, "+"), 1), (t.run_end, 1),
                          (t.coordinator_state, 1), (self.status_topic, 1)])
        self._announce()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if client is not self.client:
            return
        if self.connected:
            self.connected = False
            self.ctx.counts.connected -= 1
        if self.leaving:
            self._finish()
        else:
            self._schedule_reconnect()

    # ---- presence --------------------------------------------------------------------------------------------

    def _status(self, status: str) -> ClientStatus:
        info = {**self.ctx.base_info, "instance": f"{self.ctx.instance}-{self.index}-{self.incarnation}"}
        return ClientStatus(run=self.ctx.settings.run, round=self.last.round if self.last else 0,
                            sender=self.client_id, status=status, software=f"fedmq {SOFTWARE_VERSION} (simulated)",
                            num_examples=self.examples, device=info)

    def _announce(self) -> None:
        assert self.client is not None
        payload = self._status("online").encode()
        info = self.client.publish(self.status_topic, payload, qos=1, retain=True)
        self.birth_mids.add(info.mid)
        self.ctx.counts.births_published += 1
        self.ctx.counts.bytes_out += len(payload)

    def _check_own_status(self, payload: bytes) -> None:
        """Anything but our own birth on our status topic while connected (our previous incarnation's will, another
        process's birth): announce again, at most once a second (PROTOCOL.md, client_status)."""
        if not self.connected or self.leaving:
            return
        try:
            status = decode_message(payload, 64 * 1024) if payload else None
        except DecodeError:
            status = None
        mine = f"{self.ctx.instance}-{self.index}-{self.incarnation}"
        if isinstance(status, ClientStatus) and status.status == "online" and status.device.get("instance") == mine:
            return
        now = time.monotonic()
        if now - self.birth_fixed_at < REANNOUNCE_EVERY_S:
            return
        self.birth_fixed_at = now
        self._announce()

    # ---- receiving -------------------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self.client or self.done:
            return
        payload = bytes(msg.payload)
        self.ctx.counts.bytes_in += len(payload)
        topic = msg.topic
        if topic == self.status_topic:
            self._check_own_status(payload)
            return
        if not payload:
            if topic == self.ctx.topics.run_end:
                self.run_end.cleared()
            return   # a cleared retained message
        message, transfer = self.ctx.shared.receive(topic, payload)
        if message is None:
            if transfer:
                self.pending_transfer = transfer
                return
            if not self.pending_transfer or (message := self.ctx.shared.completed(self.pending_transfer)) is None:
                return
        if message.run != self.ctx.settings.run:
            return
        t = self.ctx.topics
        if isinstance(message, GlobalModel) and topic.startswith(t.global_model):
            self.pending_transfer = ""
            self.ctx.counts.models_received += 1
            self.run_end.seen_run_model = True
            self.latest = message
            self.deliveries += 1
            self._consider()
        elif isinstance(message, RunEnd) and topic == t.run_end:
            if self.run_end.end(message, bool(msg.retain)) is not None:
                self.leave()
        elif isinstance(message, CoordinatorState) and topic == t.coordinator_state:
            if self.run_end.state(message) is not None:
                self.leave()   # a run_end held while the state it knew said "training": a reconnect after the end

    # ---- rounds ----------------------------------------------------------------------------------------------

    def _consider(self) -> None:
        """Act on the latest model: train, re-send or wait (decisions.model_action)."""
        model = self.latest
        if model is None or self.handled_delivery == self.deliveries or self.leaving or self.done:
            return
        if self.training is not None:
            if not abandons_training(self.training.model.round, model.round, model.train.mode):
                return   # looked at again once this training's update is out
            self.training.timer.cancel()
            self.training = None
            self.ctx.counts.trainings_abandoned += 1
        self.handled_delivery = self.deliveries
        action = model_action(self.client_id, model.round, model.weights_sha256, model.cohort, self.last)
        if action is ModelAction.TRAIN:
            self._start_training(model)
        elif action is ModelAction.RESEND and self.last is not None:
            self._publish_update(model, self.last.train_s, resend=True)
        elif action is ModelAction.NOT_ASKED:
            self.ctx.counts.not_asked += 1

    def _start_training(self, model: GlobalModel) -> None:
        s = self.ctx.settings
        attempt = self.attempts[model.round]
        self.attempts[model.round] += 1
        train_s = train_seconds(s, self.index, model.round, attempt)
        death = failure(s, self.index, model.round, attempt, train_s)
        self.ctx.counts.trainings_started += 1
        if death is not None:
            timer = self.ctx.loop.call_later(death.after_s, self._die)
        else:
            timer = self.ctx.loop.call_later(train_s, lambda: self._trained(model, train_s))
        self.training = _Training(model, train_s, timer)

    def _trained(self, model: GlobalModel, train_s: float) -> None:
        self.training = None
        if self.done or self.leaving:
            return
        self.last = SentRecord(model.round, model.weights_sha256, train_s)
        self.rounds_trained += 1
        self._publish_update(model, train_s, resend=False)
        self._consider()   # a model that came meanwhile: async's next version, or the same round offered again

    def _publish_update(self, model: GlobalModel, train_s: float, resend: bool) -> None:
        assert self.client is not None
        s = self.ctx.settings
        messages = update_messages(model, self.ctx.topics, self.client_id, self.index, s.seed, s.noise,
                                   self.examples, train_s, s.chunk_bytes)
        counts = self.ctx.counts
        info = None
        for topic, payload in messages:
            info = self.client.publish(topic, payload, qos=1)
            counts.bytes_out += len(payload)
        assert info is not None
        self.update_mids[info.mid] = (model.round, resend)   # the last message (the manifest if chunked)
        (counts.resends_published if resend else counts.updates_published)[model.round] += 1

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if client is not self.client:
            return
        counts = self.ctx.counts
        if mid in self.birth_mids:
            self.birth_mids.discard(mid)
            counts.births_confirmed += 1
        elif mid in self.update_mids:
            round_, resend = self.update_mids.pop(mid)
            (counts.resends_acknowledged if resend else counts.updates_acknowledged)[round_] += 1
        elif mid == self.offline_mid:
            self._finish()

    # ---- failures and the end --------------------------------------------------------------------------------

    def _die(self) -> None:
        """An injected failure mid-round: the socket closes without DISCONNECT (the broker fires the will); the
        device comes back as a new process after --rejoin-seconds, with nothing remembered."""
        self.ctx.counts.failures += 1
        self.training = None
        client, self.client = self.client, None
        if client is not None:
            sock = client.socket()
            self.ctx.loop.detach(client)
            if sock is not None:
                sock.close()
        if self.connected:
            self.connected = False
            self.ctx.counts.connected -= 1
        self.incarnation += 1
        self.connected_before = False
        self.reconnect_attempt = 0
        self.latest = None
        self.deliveries = self.handled_delivery = 0
        self.last = None
        # A new process knows no coordinator state; seen_run_model stays: a device back after the run ended leaves
        # (a real one would wait for the next run).
        self.run_end = RunEndWatch(seen_run_model=self.run_end.seen_run_model)
        self.pending_transfer = ""
        self.birth_mids.clear()
        self.update_mids.clear()
        if self.reconnect_timer is not None:
            self.reconnect_timer.cancel()
        self.reconnect_timer = self.ctx.loop.call_later(self.ctx.settings.rejoin_seconds, self.connect)

    def leave(self) -> None:
        """The run ended (or the simulator stops): publish the offline status, then disconnect."""
        if self.leaving or self.done:
            return
        self.leaving = True
        if self.training is not None:
            self.training.timer.cancel()
            self.training = None
        if self.reconnect_timer is not None:
            self.reconnect_timer.cancel()
            self.reconnect_timer = None
        if self.client is None or not self.connected:
            self._finish()
            return
        payload = self._status("offline").encode()
        self.offline_mid = self.client.publish(self.status_topic, payload, qos=1, retain=True).mid
        self.ctx.counts.bytes_out += len(payload)
        self.ctx.loop.call_later(LEAVE_TIMEOUT_S, self._finish)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.ctx.remaining -= 1
        if self.connected:
            self.ctx.counts.left += 1
        if self.client is not None:
            self.client.disconnect()
