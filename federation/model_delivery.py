"""Model delivery over MQTT: the messages that publish a deployed TFLite model, and the receiver that checks them.

A `deployed_model` message, retained; larger than `chunk_bytes` it goes as PROTOCOL.md's chunked transfer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from federation.chunked_transfer import outgoing_messages
from federation.chunking import ChunkError, Reassembler, sha256_hex
from federation.codec import DecodeError
from federation.deployment import DeploymentInfo
from federation.messages import ChunkedMessage, DeployedModel, Message, ModelChunk, decode_message
from federation.topics import RunTopics

log = logging.getLogger(__name__)


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


class DeliveryRejected(Exception):
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
    that fails a check: undecodable, wrong type or run, a chunk not matching its hash, a model not matching its."""

    def __init__(self, topics: RunTopics, max_payload: int = 0, chunk_timeout_s: float = 60.0,
                 max_model_bytes: int = 256 * 1024 * 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = topics
        self.max_payload = max_payload
        self.max_model_bytes = max_model_bytes
        self._chunks = Reassembler(chunk_timeout_s, max_model_bytes + 64 * 1024, clock)
        self._announced: dict[str, ChunkedMessage] = {}  # manifests of chunked deployments not complete yet
        self._latest: str | None = None  # the transfer id of the last deployment announced on the deploy topic

    @property
    def pending(self) -> int:
        """Chunked transfers in progress."""
        return len(self._chunks.pending)

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topics.deploy_chunks_wildcard, 1), (self.topics.deploy, 1)]

    def handle(self, topic: str, payload: bytes) -> Delivered | None:
        if not payload:
            return None  # a cleared retained message
        if topic == self.topics.deploy:
            message = self._decode(payload, topic, (DeployedModel, ChunkedMessage))
            if isinstance(message, DeployedModel):
                self._latest = None
                return self._verified(message)
            return self._announce(message)
        prefix = self.topics.deploy_chunk(0)[:-1]
        if not topic.startswith(prefix):
            raise DeliveryRejected(f"message on unexpected topic {topic}", "wrong_topic")
        chunk = self._decode(payload, topic, (ModelChunk,))
        assert isinstance(chunk, ModelChunk)
        if topic[len(prefix):] != str(chunk.index):
            raise DeliveryRejected(f"chunk {chunk.index} published on {topic}", "bad_chunk")
        if sha256_hex(chunk.data) != chunk.sha256:
            raise DeliveryRejected(f"chunk {chunk.index}/{chunk.count} of transfer {chunk.transfer[:12]}: its "
                                   f"{len(chunk.data)} bytes do not match its sha256", "bad_hash")
        try:
            whole = self._chunks.add_chunk(chunk.transfer, chunk.index, chunk.data)
        except ChunkError as exc:
            raise DeliveryRejected(str(exc), "bad_hash" if exc.reason == "bad_chunk" else exc.reason) from None
        return self._assembled(chunk.transfer, whole)

    def expire(self) -> list[ChunkedMessage]:
        """Drop chunked transfers that stayed incomplete too long; returns the announced ones among them (stray
        chunks without a manifest, e.g. retained ones of an older model, are dropped silently)."""
        return [m for key in self._chunks.expire() if (m := self._announced.pop(key, None)) is not None]

    def _decode(self, payload: bytes, topic: str, expected: tuple[type[Message], ...]) -> Message:
        try:
            message = decode_message(payload, self.max_payload)
        except DecodeError as exc:
            raise DeliveryRejected(f"undecodable message on {topic} ({len(payload)} bytes): {exc}",
                                   exc.reason) from None
        if not isinstance(message, expected):
            raise DeliveryRejected(f"{message.TYPE} message on {topic}", "wrong_type")
        if message.run != self.topics.run:
            raise DeliveryRejected(f"deployment for run {message.run!r}, this device serves {self.topics.run!r}",
                                   "wrong_run")
        return message

    def _announce(self, message: ChunkedMessage) -> Delivered | None:
        manifest = message.manifest
        if manifest.size > self.max_model_bytes + 64 * 1024:
            raise DeliveryRejected(f"a deployment of {manifest.size} bytes exceeds the limit of "
                                   f"{self.max_model_bytes} model bytes", "too_large")
        self._latest = manifest.sha256
        self._announced[manifest.sha256] = message
        for stale in [k for k in self._announced if k != manifest.sha256 and k not in self._chunks.pending]:
            del self._announced[stale]
        log.info("deployment of round %d announced: %d bytes in %d chunks", message.round, manifest.size,
                 manifest.count)
        try:
            whole = self._chunks.add_manifest(manifest)
        except ChunkError as exc:
            raise DeliveryRejected(f"deployment of round {message.round}: {exc}", exc.reason) from None
        return self._assembled(manifest.sha256, whole)

    def _assembled(self, transfer: str, whole: bytes | None) -> Delivered | None:
        if whole is None:
            return None
        manifest = self._announced.pop(transfer)
        if transfer != self._latest:
            log.info("deployment of round %d complete but superseded by a later one; ignored", manifest.round)
            return None
        message = self._decode(whole, self.topics.deploy, (DeployedModel,))
        assert isinstance(message, DeployedModel)
        if (message.sender, message.round) != (manifest.sender, manifest.round):
            raise DeliveryRejected(f"the reassembled deployment names sender {message.sender!r} and round "
                                   f"{message.round}, its manifest {manifest.sender!r} and {manifest.round}",
                                   "sender_mismatch")
        return self._verified(message)

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
