"""A site relay (`python -m coordinator relay`): re-publishes the central run's retained topics on a site broker, and
sends the central coordinator one partial aggregate per round for the site's devices (PROTOCOL.md "Site relays").

Down: model, state, end, metrics and deployment, byte for byte, retained. Up: the site's updates, validated by
coordinator.intake's rules and streamed into one FedAvg (O(model) memory), and a presence summary of the site."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from coordinator.admission import Admission
from coordinator.aggregation import ClientResult, FedAvg
from coordinator.cohort import SamplingRule
from coordinator.drops import DropLog
from coordinator.intake import ClientCleared, ClientOffline, ClientOnline, Intake, UpdateReceived
from coordinator.quorum import QuorumRule
from coordinator.rounds import Rounds
from federation.protocol.chunked_transfer import ChunkedReceiver, base_topic, chunk_topic, outgoing_messages
from federation.protocol.codec import DecodeError, DecodeLimits, TensorSpec
from federation.protocol.encodings import Encoded
from federation.protocol.messages import CoordinatorState, GlobalModel, RunEnd, decode_message
from federation.protocol.relay_messages import PartialUpdate, RelayStatus, SiteClient, SiteDevice
from federation.protocol.topics import RunTopics
from federation.protocol.version import SOFTWARE_VERSION
from federation.transport.inbox import Inbound, Inbox
from federation.transport.mqtt_link import BrokerAddress, MqttLink

log = logging.getLogger(__name__)

INBOX_BYTES = 64 * 1024 * 1024
_UPDATE_SLACK_BYTES = 64 * 1024      # as the coordinator's: framing, names and metrics on top of the tensor bytes
_STATUS_EVERY_S = 0.25               # presence changes are summarised upstream at most this often
_POLL_S = 0.2


@dataclass(frozen=True)
class RelayOptions:
    site: str
    upstream: BrokerAddress
    local: BrokerAddress
    prefix: str
    run: str
    send_after_s: float
    max_payload: int


@dataclass
class _OpenRound:
    """The round the relay collects for: the model, its weights, the site's running FedAvg and who is in it."""

    model: GlobalModel
    weights: list[np.ndarray]
    opened_at: float
    aggregate: FedAvg
    pending: list[SiteClient]
    slowest_train_s: float = 0.0
    part: int = 0


class SiteRelay:
    """One site's relay between the central broker (`upstream`) and the site broker (`local`)."""

    def __init__(self, options: RelayOptions) -> None:
        self.o = options
        self.topics = RunTopics(options.prefix, options.run)
        self.inbox = Inbox(INBOX_BYTES)
        self.drops = DropLog()
        # The site's own round state machine: the central cohort, which site devices answered, which are online.
        self.rounds = Rounds(QuorumRule(1, 1.0, options.send_after_s), SamplingRule(), options.run)
        self.intake = Intake(self.topics, self.rounds, self.drops, ChunkedReceiver(options.max_payload), [])
        self.model_receiver = ChunkedReceiver(options.max_payload)
        self.devices: dict[str, SiteDevice] = {}
        self.error = ""                       # why this relay can't relay the run (shown centrally)
        self.open: _OpenRound | None = None
        self.admission: Admission | None = None
        self.stopping = threading.Event()
        self._status_dirty = True
        self._status_sent_at = 0.0
        self._run_ended = False
        self._seen_model = False
        self._down: dict[str, bytes] = {}     # the retained messages re-published on the site broker
        self._down_lock = threading.Lock()
        self.partials_sent = 0
        client_id = f"fedmq-relay-{options.run}-{options.site}"
        self.up = MqttLink(client_id, options.upstream, subscriptions=[
            (self.topics.global_model, 1), (chunk_topic(self.topics.global_model, "+"), 1),
            (self.topics.coordinator_state, 1), (self.topics.run_end, 1), (self.topics.metrics, 1),
            (self.topics.deploy, 1), (self.topics.deploy_chunks_wildcard, 1)],
            on_message=self._from_upstream, will=(self.topics.relay_status(options.site), self._status("offline")),
            on_connected=self._upstream_connected)
        self.local = MqttLink(client_id, options.local, subscriptions=[
            (self.topics.updates_wildcard, 1), (chunk_topic(self.topics.updates_wildcard, "+"), 1),
            (self.topics.statuses_wildcard, 1)],
            on_message=self._from_site, on_connected=self._local_connected)

    # ---- paho's threads ----------------------------------------------------------------------------------------

    def _from_upstream(self, topic: str, payload: bytes, retained: bool) -> None:
        """Down the tree: re-publish at once, retained, on the site broker; the relay's thread reads the model, the
        coordinator's state and the run's end from the inbox."""
        with self._down_lock:
            if payload:
                self._down[topic] = payload
            else:
                self._down.pop(topic, None)
            self.local.publish(topic, payload, qos=1, retain=True)
        if base_topic(topic)[0] in (self.topics.global_model, self.topics.coordinator_state, self.topics.run_end):
            self.inbox.put(Inbound(topic, payload, retained))

    def _from_site(self, topic: str, payload: bytes, retained: bool) -> None:
        admission = self.admission
        if admission is not None and topic.startswith(self.topics.base + "/update/"):
            client_id = self.topics.client_of(base_topic(topic)[0]) or topic
            if admission.admit(client_id, len(payload)) is not None:
                return
        while not self.inbox.put(Inbound(topic, payload, retained), timeout=1.0):
            if self.stopping.is_set():
                return

    def _upstream_connected(self) -> None:
        self._status_dirty = True   # a restarted central broker without persistence lost our status

    def _local_connected(self) -> None:
        """A restarted site broker without persistence lost the retained model: publish what we have."""
        with self._down_lock:
            for topic, payload in self._down.items():
                self.local.publish(topic, payload, qos=1, retain=True)

    # ---- the relay's thread ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Relay until the central run ends (or stop()); 0 when it ended."""
        log.info("relay of site %s for run %s: central %s, site %s; partials %g s after the model at the latest",
                 self.o.site, self.o.run, self.o.upstream, self.o.local, self.o.send_after_s)
        self.up.start()
        self.local.start()
        try:
            while not self.stopping.is_set():
                item = self.inbox.get(_POLL_S)
                if item is not None:
                    self._handle(item)
                self._tick(time.monotonic())
        finally:
            self._publish_status("offline")
            self.up.stop()
            self.local.stop()
        return 0 if self._run_ended else 1

    def stop(self) -> None:
        self.stopping.set()

    def _handle(self, item: Inbound) -> None:
        base = base_topic(item.topic)[0]
        if base == self.topics.global_model:
            self._model_message(item)
        elif item.topic == self.topics.run_end:
            self._run_end(item)
        elif item.topic == self.topics.coordinator_state:
            self._coordinator_state(item)
        else:
            self._site_message(item)

    def _model_message(self, item: Inbound) -> None:
        if not item.payload:
            return   # cleared at the run's end
        try:
            received = self.model_receiver.receive(item.topic, item.payload, expected_sender="coordinator")
        except DecodeError as exc:
            log.warning("relay: a model message it can't read (%s): %s", exc.reason, exc)
            return
        if received is not None and isinstance(received.message, GlobalModel):
            self._new_model(received.message)

    def _run_end(self, item: Inbound) -> None:
        try:
            if item.payload and isinstance(decode_message(item.payload), RunEnd) and (not item.retained
                                                                                       or self._seen_model):
                self._run_ended = True
        except DecodeError:
            pass

    def _coordinator_state(self, item: Inbound) -> None:
        try:
            state = decode_message(item.payload) if item.payload else None
        except DecodeError:
            return
        if not isinstance(state, CoordinatorState) or state.status != "offline":
            return
        if self._run_ended:
            log.info("relay: the run ended; the site has its end and the coordinator's offline state")
            self.stopping.set()
        elif self.open is not None:
            # The coordinator died: restarted, it resumes the round from its checkpoint and re-publishes its model
            # (same digest), and the site's devices re-send their updates. Collect them afresh.
            log.warning("relay: the coordinator went offline in round %d; the round starts over at this site when "
                        "its model comes again", self.open.model.round)
            self.open = None
            if self.rounds.tracker is not None:
                self.rounds.close(time.monotonic())

    def _new_model(self, model: GlobalModel) -> None:
        self._seen_model = True
        now = time.monotonic()
        if model.train.mode != "sync":
            if not self.error:
                self.error = ("a relay can't pre-aggregate asynchronous rounds (each update has its own staleness): "
                              "connect this site's devices to the central broker, or run the run in sync mode")
                log.error("relay: %s", self.error)
                self._status_dirty = True
            return
        current = self.open
        if current is not None and (current.model.round, current.model.weights_sha256) == \
                (model.round, model.weights_sha256):
            if model.cohort is not None and self.rounds.tracker is not None:   # a top-up: more cohort members
                self.rounds.tracker.extend(set(model.cohort))
            return
        if current is not None and current.pending:
            log.warning("relay: round %d closed centrally before %d site updates were sent; sending them (late)",
                        current.model.round, len(current.pending))
            self._send(current)
        weights = [w for _, w in model.tensors]
        specs = [TensorSpec(name, str(w.dtype), tuple(w.shape)) for name, w in model.tensors]
        if specs != self.intake.specs:
            self._configure_intake(specs)
        self.intake.encoding = model.train.encoding
        self.intake.version_sha256 = {model.round: model.weights_sha256}
        if self.rounds.tracker is not None:
            self.rounds.close(now)
        self.rounds.last_closed = min(self.rounds.last_closed, model.round - 1)   # a coordinator resumed earlier
        cohort = frozenset(model.cohort) if model.cohort is not None else frozenset(self.rounds.trainable())
        self.rounds.open(model.round, now, cohort)
        assert self.admission is not None
        self.admission.new_round()
        aggregate = FedAvg()
        aggregate.begin(weights)
        self.open = _OpenRound(model, weights, now, aggregate, [])
        at_site = cohort & set(self.devices)
        log.info("relay: round %d: model forwarded; %d of the cohort's %d are at this site", model.round,
                 len(at_site), len(cohort))

    def _configure_intake(self, specs: list[TensorSpec]) -> None:
        """Limits from the model, as the coordinator sets them (coordinator.engine)."""
        tensor_bytes = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs)
        max_update = min(self.o.max_payload, 2 * tensor_bytes + _UPDATE_SLACK_BYTES + 256 * len(specs))
        self.intake.specs = specs
        self.intake.receiver = ChunkedReceiver(max_update, limits=DecodeLimits.for_model(specs),
                                               max_held_bytes=max(64 * 1024 * 1024, 4 * max_update))
        self.admission = Admission(max_message_bytes=max_update, max_messages=4 * (max_update // 1024 + 2),
                                   max_bytes=16 * max_update)
        self.intake.admission = self.admission

    def _site_message(self, item: Inbound) -> None:
        event = self.intake.decode(item)
        if isinstance(event, UpdateReceived):
            self._update(event)
        elif isinstance(event, ClientOnline):
            s = event.status
            if self.devices.get(event.client_id) != SiteDevice(event.client_id, s.num_examples, s.error):
                self.devices[event.client_id] = SiteDevice(event.client_id, s.num_examples, s.error)
                self.rounds.client_online(event.client_id, s.error)
                self._status_dirty = True
        elif isinstance(event, (ClientOffline, ClientCleared)):
            if self.devices.pop(event.client_id, None) is not None:
                self._status_dirty = True
            self.rounds.client_offline(event.client_id)

    def _update(self, event: UpdateReceived) -> None:
        current = self.open
        if current is None or self.rounds.tracker is None:
            return
        update = event.update
        if self.rounds.accept(event.client_id, update.round):
            self._status_dirty = True   # seen offline: an update proves it is there
        tensors = [t.value if isinstance(t, Encoded) else t for _, t in update.tensors]
        if update.base_sha256:   # deltas against the round's model (checked by the intake)
            current.aggregate.add(ClientResult(event.client_id, update.num_examples, deltas=tensors))
        else:
            current.aggregate.add(ClientResult(event.client_id, update.num_examples,
                                               [t for t in tensors if isinstance(t, np.ndarray)]))
        current.pending.append(SiteClient(event.client_id, update.num_examples))
        current.slowest_train_s = max(current.slowest_train_s, update.metrics.get("train_time_s", 0.0))
        log.info("relay: round %d: update of %s (%d examples), %d waiting to be sent", update.round, event.client_id,
                 update.num_examples, len(current.pending))

    def _tick(self, now: float) -> None:
        self.intake.drain_admission_drops()
        self.drops.flush()
        current = self.open
        if current is not None and current.pending and self.rounds.tracker is not None:
            if not self.rounds.waiting_for() or now - current.opened_at >= self.o.send_after_s:
                self._send(current)
        if self._status_dirty and now - self._status_sent_at >= _STATUS_EVERY_S and self.up.connected.is_set():
            self._publish_status("online")
            self._status_sent_at = now

    def _send(self, current: _OpenRound) -> None:
        """One partial upstream: the weighted mean of the pending updates, their ids and counts; then start over."""
        model = current.model
        mean = current.aggregate.result()
        rejected, ignored = self.drops.take()
        partial = PartialUpdate(run=self.o.run, round=model.round, sender=self.o.site, clients=list(current.pending),
                                num_examples=sum(c.num_examples for c in current.pending),
                                metrics={"train_time_s": round(current.slowest_train_s, 4)},
                                tensors=[(name, w) for (name, _), w in zip(model.tensors, mean)], part=current.part,
                                rejected=rejected, ignored=ignored)
        messages = outgoing_messages(self.topics.relay_update(self.o.site), partial.encode(), model.train.chunk_bytes,
                                     self.o.run, model.round, self.o.site)
        for topic, payload in messages:
            self.up.publish(topic, payload, qos=1)
        self.partials_sent += 1
        log.info("relay: round %d: partial %d sent: %d devices, %d examples, %.2f MB", model.round, current.part,
                 len(current.pending), partial.num_examples, sum(len(p) for _, p in messages) / 1e6)
        current.part += 1
        current.pending = []
        current.slowest_train_s = 0.0
        current.aggregate.begin(current.weights)

    def _status(self, status: str) -> bytes:
        devices = [] if status == "offline" else sorted(self.devices.values(), key=lambda d: d.id)
        round_ = self.open.model.round if self.open is not None else 0
        return RelayStatus(run=self.o.run, round=round_, sender=self.o.site, status=status,
                           software=f"fedmq {SOFTWARE_VERSION} relay", devices=devices, error=self.error).encode()

    def _publish_status(self, status: str) -> None:
        self._status_dirty = False
        info = self.up.publish(self.topics.relay_status(self.o.site), self._status(status), qos=1, retain=True)
        if status == "offline":
            try:
                info.wait_for_publish(5.0)
            except (RuntimeError, ValueError):
                pass
