"""Chunked transfer of any fedmq message over brokers that cap message sizes (EMQX 1 MB, AWS IoT 128 KB):
split a payload into `model_chunk` messages on `<topic>/chunk/<i>` plus a `chunked` manifest on `<topic>`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from federation.chunking import ChunkError, Reassembler, split
from federation.codec import DecodeError
from federation.messages import ChunkedMessage, Message, ModelChunk, decode_message

log = logging.getLogger(__name__)

_CHUNK_TOPIC = re.compile(r"^(?P<base>.+)/chunk/(?P<index>\d{1,5})$")


@dataclass(frozen=True)
class Received:
    """A whole message: where its manifest or payload came, what it is, and its size in bytes."""

    topic: str
    message: Message
    size: int


def chunk_topic(topic: str, index: int | str) -> str:
    return f"{topic}/chunk/{index}"


def base_topic(topic: str) -> tuple[str, bool]:
    """(the topic a chunk belongs to, True) for a chunk topic, else (topic, False)."""
    match = _CHUNK_TOPIC.match(topic)
    return (match["base"], True) if match else (topic, False)


def outgoing_messages(topic: str, payload: bytes, chunk_bytes: int, run: str, round: int,
                      sender: str) -> list[tuple[str, bytes]]:
    """What to publish for `payload` on `topic`: itself if it fits `chunk_bytes` (0: no limit), else its
    chunks followed by the `chunked` manifest, so a receiver that has the manifest soon has everything."""
    if not chunk_bytes or len(payload) <= chunk_bytes:
        return [(topic, payload)]
    manifest, chunks = split(payload, chunk_bytes)
    out = [(chunk_topic(topic, i), ModelChunk(run=run, round=round, sender=sender, transfer=manifest.sha256,
                                              index=i, count=manifest.count, sha256=manifest.chunk_sha256[i],
                                              data=data).encode())
           for i, data in enumerate(chunks)]
    out.append((topic, ChunkedMessage(run=run, round=round, sender=sender, manifest=manifest).encode()))
    return out


class ChunkedReceiver:
    """Decodes incoming payloads; reassembles chunked ones (in any order, with duplicates) per topic.

    `receive` returns the whole message once complete, None while chunks are missing, and raises
    DecodeError (with a reason) for anything malformed or inconsistent."""

    def __init__(self, max_payload: int, timeout_s: float = 120.0) -> None:
        self.max_payload = max_payload
        self.timeout_s = timeout_s
        self._assemblies: dict[str, Reassembler] = {}

    def receive(self, topic: str, payload: bytes) -> Received | None:
        base, is_chunk = base_topic(topic)
        message = decode_message(payload, self.max_payload)
        if isinstance(message, ModelChunk) != is_chunk:
            raise DecodeError(f"{message.TYPE} message on {topic}", "wrong_type")
        try:
            if isinstance(message, ModelChunk):
                whole = self._assembly(base).add_chunk(message.transfer, message.index, message.data)
            elif isinstance(message, ChunkedMessage):
                whole = self._assembly(base).add_manifest(message.manifest)
            else:
                return Received(base, message, len(payload))
        except ChunkError as exc:
            raise DecodeError(f"chunked transfer on {base}: {exc}", exc.reason) from None
        if whole is None:
            return None
        inner = decode_message(whole, self.max_payload)
        if isinstance(inner, (ModelChunk, ChunkedMessage)):
            raise DecodeError(f"a reassembled payload on {base} is itself a {inner.TYPE}", "wrong_type")
        if (inner.sender, inner.run) != (message.sender, message.run):
            raise DecodeError(f"reassembled {inner.TYPE} on {base} names sender {inner.sender!r} of run "
                              f"{inner.run!r}, its chunks {message.sender!r} of {message.run!r}", "sender_mismatch")
        return Received(base, inner, len(whole))

    def expire(self) -> list[str]:
        """Drop incomplete transfers older than the timeout; return their ids."""
        return [tid for assembly in self._assemblies.values() for tid in assembly.expire()]

    def _assembly(self, base: str) -> Reassembler:
        if base not in self._assemblies:
            self._assemblies[base] = Reassembler(timeout_s=self.timeout_s, max_bytes=self.max_payload)
        return self._assemblies[base]
