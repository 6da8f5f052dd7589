"""Model delivery over MQTT: the messages that publish a deployed TFLite model, and the receiver that checks them.

A `deployed_model` message, retained; larger than `chunk_bytes` it goes as PROTOCOL.md's chunked transfer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from federation.errors import FedmqError
from federation.protocol.chunked_transfer import ChunkedReceiver, outgoing_messages
from federation.protocol.byte_chunks import sha256_hex
from federation.protocol.codec import DecodeError, wire_repr
from federation.protocol.deployed_model import DeploymentInfo
from federation.protocol.messages import ChunkedMessage, DeployedModel, Message, ModelChunk
from federation.protocol.topics import RunTopics

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 64 * 1024  # a deployed_model message beyond its model bytes: fields, class names, framing


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: all of them retained, QoS 1."""

    topic: str
    payload: bytes


def delivery_messages(topics: RunTopics, info: DeploymentInfo, content: bytes, chunk_bytes: int,
                      sender: str) -> list[Outgoing]:
    """What to publish for `content`, in order: the `deployed_model` message, or its chunks then the manifest."""
    if sha256_hex(content) != info.sha256 or len(content) != info.size:
        raise ValueError("the deployment's sha256 or size does not describe the model bytes")
    payload = DeployedModel(run=info.run, round=info.round, sender=sender, info=info, model=content).encode()
    return [Outgoing(topic, data) for topic, data in
            outgoing_messages(topics.deploy, payload, chunk_bytes, info.run, info.round, sender)]


class DeliveryRejected(FedmqError):
    """A deployment message that can't be used; `reason` is a short code, the text says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Delivered:
    """A complete model whose bytes match the sha256 its deployment announced."""

    info: DeploymentInfo
    content: bytes


class DeliveryReceiver:
    """Turns the messages of the deploy topic and its chunk topics into verified models.

    `handle()` returns a Delivered when a message completes a model; None while chunks are missing, for an empty
    retained payload, or for a transfer superseded by a later deployment; and raises DeliveryRejected for a message
    that fails a check: undecodable, wrong type or run, a chunk not matching its hash, a model not matching its.
    Chunks go through a ChunkedReceiver, the same as every other topic's, with its caps and expiry: at most
    `max_held_bytes` (default: one largest deployment) of pending chunks, stray ones dropped first."""

    def __init__(self, topics: RunTopics, max_payload: int = 0, chunk_timeout_s: float = 60.0,
                 max_model_bytes: int = 256 * 1024 * 1024, clock: Callable[[], float] = time.monotonic,
                 max_held_bytes: int | None = None) -> None:
        self.topics = topics
        self.max_model_bytes = max_model_bytes
        self.max_payload = max_payload or max_model_bytes + ENVELOPE_BYTES
        largest = min(self.max_payload, max_model_bytes + ENVELOPE_BYTES)
        self._receiver = ChunkedReceiver(self.max_payload, chunk_timeout_s, clock=clock,
                                         max_held_bytes=max_held_bytes or largest + largest // 4,
                                         max_sender_bytes=max_held_bytes or largest + largest // 4)
        self._latest: str | None = None  # the transfer id of the last deployment announced on the deploy topic

    @property
    def pending(self) -> int:
        """Chunked transfers in progress."""
        return self._receiver.pending

    @property
    def receiver(self) -> ChunkedReceiver:
        return self._receiver

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topics.deploy_chunks_wildcard, 1), (self.topics.deploy, 1)]

    def handle(self, topic: str, payload: bytes) -> Delivered | None:
        if not payload:
            return None  # a cleared retained message
        if topic != self.topics.deploy and not topic.startswith(self.topics.deploy_chunk(0)[:-1]):
            raise DeliveryRejected(f"message on unexpected topic {topic}", "wrong_topic")
        try:
            received = self._receiver.receive(topic, payload, check=self._check)
        except DecodeError as exc:
            raise DeliveryRejected(str(exc), "bad_hash" if exc.reason == "bad_chunk" else exc.reason) from None
        if received is None:
            return None
        message = received.message
        if not isinstance(message, DeployedModel):
            raise DeliveryRejected(f"{message.TYPE} message on {topic}", "wrong_type")
        if received.manifest is None:
            self._latest = None
            return self._verified(message)
        manifest = received.manifest
        if manifest.manifest.sha256 != self._latest:
            log.info("deployment of round %d complete but superseded by a later one; ignored", manifest.round)
            return None
        self._check(topic, message)
        if (message.sender, message.round) != (manifest.sender, manifest.round):
            raise DeliveryRejected(f"the reassembled deployment names sender {wire_repr(message.sender)} and round "
                                   f"{message.round}, its manifest {wire_repr(manifest.sender)} and {manifest.round}",
                                   "sender_mismatch")
        return self._verified(message)

    def expire(self) -> list[ChunkedMessage]:
        """Drop chunked transfers that stayed incomplete too long; returns the announced ones among them (stray
        chunks without a manifest, e.g. retained ones of an older model, are dropped silently)."""
        return self._receiver.expire()

    def _check(self, base: str, message: Message) -> None:
        """Refuses, before anything is kept, what can't be a deployment of this run; notes announcements."""
        if base == self.topics.deploy and not isinstance(message, (DeployedModel, ChunkedMessage, ModelChunk)):
            raise DecodeError(f"{message.TYPE} message on {base}", "wrong_type")
        if message.run != self.topics.run:
            raise DecodeError(f"deployment for run {wire_repr(message.run)}, this device serves "
                              f"{self.topics.run!r}", "wrong_run")
        if isinstance(message, ChunkedMessage):
            manifest = message.manifest
            if manifest.size > self.max_model_bytes + ENVELOPE_BYTES:
                raise DecodeError(f"a deployment of {manifest.size} bytes exceeds the limit of "
                                  f"{self.max_model_bytes} model bytes", "too_large")
            self._latest = manifest.sha256
            log.info("deployment of round %d announced: %d bytes in %d chunks", message.round, manifest.size,
                     manifest.count)

    def _verified(self, message: DeployedModel) -> Delivered:
        info, model = message.info, message.model
        if info.size > self.max_model_bytes:
            raise DeliveryRejected(f"model {info.model_version}: {info.size} bytes exceed the limit of "
                                   f"{self.max_model_bytes}", "too_large")
        if len(model) != info.size:
            raise DeliveryRejected(f"model {info.model_version}: {len(model)} bytes where its deployment announced "
                                   f"{info.size}", "bad_hash")
        digest = sha256_hex(model)
        if digest != info.sha256:
            raise DeliveryRejected(f"model {info.model_version}: its bytes hash to sha256 {digest[:12]}..., its "
                                   f"deployment announced {info.sha256[:12]}...", "bad_hash")
        return Delivered(info, model)
