"""What the coordinator's inbox holds, turned into typed events: a client online, offline or cleared, or an update
decoded and validated (sender, run, open round, cohort, first update, tensors); anything else is dropped and counted.

Decoding happens here, on the engine's thread, within the limits the model sets; the round state machine
(coordinator.rounds) answers the envelope checks of every message on an update topic, chunks included."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from coordinator.admission import Admission
from coordinator.drops import DropLog
from coordinator.rounds import Rounds
from federation.protocol.chunked_transfer import ChunkedReceiver, base_topic
from federation.protocol.codec import DecodeError, TensorSpec, check_tensors, wire_repr
from federation.protocol.encodings import EncodingPlan, check_update_encoding
from federation.transport.inbox import Inbound
from federation.protocol.messages import ClientStatus, Message, Update, check_finite, decode_message
from federation.protocol.topics import RunTopics, check_level

log = logging.getLogger(__name__)

STATUS_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClientOnline:
    """A training client's online status for this run (`status.error`: why it can't train this run's model)."""

    client_id: str
    status: ClientStatus


@dataclass(frozen=True)
class ClientOffline:
    """A training client's offline status, or an online one for another run."""

    client_id: str
    error: str


@dataclass(frozen=True)
class ClientCleared:
    """A cleared retained status: the client is gone."""

    client_id: str


@dataclass(frozen=True)
class UpdateReceived:
    """An update of the open round from a cohort member, decoded and validated: ready to aggregate."""

    client_id: str
    update: Update
    size: int          # its bytes on the wire, chunks included


Event = ClientOnline | ClientOffline | ClientCleared | UpdateReceived


class Intake:
    """Decodes and validates the inbox's client messages into events, recording every drop in `drops`."""

    def __init__(self, topics: RunTopics, rounds: Rounds, drops: DropLog, receiver: ChunkedReceiver,
                 specs: list[TensorSpec], admission: Admission | None = None,
                 encoding: EncodingPlan = EncodingPlan()) -> None:
        self.topics = topics
        self.rounds = rounds
        self.drops = drops
        self.receiver = receiver
        self.specs = specs
        self.admission = admission
        self.encoding = encoding     # the run's uplink encoding: an update in another one is refused
        self.version_sha256: dict[int, str] = {}   # weights_sha256 of each round's model: what deltas are against

    def expire(self) -> None:
        """Forget chunks of updates that stopped arriving."""
        self.receiver.expire()

    def drain_admission_drops(self) -> None:
        """Count (and log) what admission dropped on paho's thread since the last call."""
        admission = self.admission
        if admission is None:
            return
        for (sender, reason), count in admission.take_dropped().items():
            detail = (f"update message larger than the model's {admission.max_message_bytes} bytes"
                      if reason == "too_large"
                      else f"over the device's budget of {admission.max_messages} messages and "
                           f"{admission.max_bytes} bytes this round")
            self.drops.record(sender, reason, detail, count)

    def decode(self, item: Inbound) -> Event | None:
        """The event `item` (a status or update topic's message) makes, or None: dropped, or nothing to do yet."""
        topic = item.topic
        client_id = self.topics.client_of(base_topic(topic)[0])
        if client_id is None:
            log.debug("ignoring a message on unexpected topic %.200s", topic)
            return None
        try:
            check_level(client_id, "client id")
        except ValueError:
            self.drops.record(client_id, "bad_client_id",
                              "a client id outside the protocol's characters "
                              "(1-64 of A-Z a-z 0-9 _ - ., starting with a letter or digit)")
            return None
        if topic == self.topics.client_status(client_id):
            return self._status(client_id, item.payload)
        return self._update(client_id, topic, item.payload)

    def _status(self, client_id: str, payload: bytes) -> Event | None:
        if not payload:
            return ClientCleared(client_id)
        try:
            status = decode_message(payload, STATUS_MAX_BYTES)
            if not isinstance(status, ClientStatus):
                raise DecodeError(f"{status.TYPE} message on a status topic", "wrong_type")
            if status.sender != client_id:
                raise DecodeError(f"status names sender {wire_repr(status.sender)}", "sender_mismatch")
        except DecodeError as exc:
            self.drops.record(client_id, exc.reason, f"status: {exc}")
            return None
        if status.role != "train":  # an inference-only device (edge_client serve) takes no part in training
            return None
        if status.status == "online" and status.run == self.rounds.run:
            return ClientOnline(client_id, status)
        return ClientOffline(client_id, status.error)

    def _update(self, client_id: str, topic: str, payload: bytes) -> UpdateReceived | None:
        try:
            received = self.receiver.receive(topic, payload, expected_sender=client_id,
                                             check=lambda _, message: self._check_envelope(client_id, message))
            if received is None:
                return None  # a chunk of an update still being reassembled
            update = self._validate(client_id, received.message)
        except DecodeError as exc:
            self.drops.record(client_id, exc.reason, str(exc))
            return None
        return UpdateReceived(client_id, update, received.size)

    def _check_envelope(self, client_id: str, message: Message) -> None:
        """The round state machine's checks on every message on an update topic, chunks and manifests included,
        before anything of it is kept."""
        drop = self.rounds.check(client_id, message.TYPE, message.sender, message.run, message.round,
                                 sender_text=wire_repr(message.sender), run_text=wire_repr(message.run))
        if drop is not None:
            raise DecodeError(drop.detail, drop.reason)

    def _validate(self, client_id: str, update: Message) -> Update:
        if not isinstance(update, Update):
            raise DecodeError(f"{update.TYPE} message on an update topic", "wrong_type")
        self._check_envelope(client_id, update)
        check_tensors(update.tensors, self.specs)
        check_update_encoding(update.tensors, update.base_sha256, self.encoding,
                              self.version_sha256.get(update.round, ""))
        check_finite(update.tensors)
        return update
