"""Chunked transfer of any fedmq message over brokers that cap message sizes (EMQX 1 MB, AWS IoT 128 KB):
split a payload into `model_chunk` messages on `<topic>/chunk/<i>` plus a `chunked` manifest on `<topic>`."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Hashable

from federation.protocol.byte_chunks import ChunkError, Dropped, Reassembler, sha256_hex, split
from federation.protocol.codec import DecodeError, DecodeLimits, wire_repr
from federation.protocol.messages import ChunkedMessage, Message, ModelChunk, decode_message

log = logging.getLogger(__name__)

_CHUNK_TOPIC = re.compile(r"^(?P<base>.+)/chunk/(?P<index>\d{1,5})$")


@dataclass(frozen=True)
class Received:
    """A whole message: where its manifest or payload came, what it is, its size in bytes, and for a reassembled
    one the manifest message that announced it."""

    topic: str
    message: Message
    size: int
    manifest: ChunkedMessage | None = None


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
    """Decodes incoming payloads and reassembles chunked ones, for every topic of a process: the one receiver of
    updates, global models and deployments, so that its byte caps and expiry hold across all of them.

    `receive` returns the whole message once complete, None while chunks are missing, and raises DecodeError (with
    a reason, also counted in `rejected`) for anything malformed or inconsistent. A chunk is checked against its own
    sha256 and its topic index at once, and kept per (topic, sender) and transfer, charged to its sender:

    - `max_payload`: the largest message, whole or reassembled (and so the largest transfer);
    - `max_sender_bytes` (default 2 x max_payload): chunks held for one sender; its older transfers make room;
    - `max_held_bytes` (default max(4 x max_payload, 64 MiB)): chunks held in all; the oldest stray chunks (no
      manifest yet) make room, so size it for the senders that may be mid-transfer at once;
    - `timeout_s`: a transfer not complete by then is dropped, checked on every call (amortised O(1)).

    Byte counts include a per-chunk and per-transfer overhead (federation.protocol.byte_chunks.CHUNK_OVERHEAD...). Chunk
    messages are decoded with DecodeLimits.for_size(max_payload); manifests and whole messages with `limits`."""

    def __init__(self, max_payload: int, timeout_s: float = 120.0, *, limits: DecodeLimits | None = None,
                 max_held_bytes: int | None = None, max_sender_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_payload = max_payload
        self.timeout_s = timeout_s
        self.limits = limits or DecodeLimits.for_size(max_payload)
        self._chunk_limits = DecodeLimits.for_size(max_payload)
        self._reassembler = Reassembler(timeout_s, max_held_bytes or max(4 * max_payload, 64 * 1024 * 1024), clock,
                                        max_owner_bytes=max_sender_bytes or 2 * max_payload,
                                        max_transfer_bytes=max_payload, on_drop=self._dropped)
        self._manifests: dict[tuple[Hashable, str], ChunkedMessage] = {}  # announced transfers still pending
        self._expired: deque[ChunkedMessage] = deque(maxlen=64)  # announced, then dropped: for expire()
        self.rejected: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        """Transfers in progress."""
        return len(self._reassembler)

    @property
    def dropped(self) -> Counter[str]:
        """Transfers given up, by why: expired, evicted."""
        return self._reassembler.dropped

    def held_bytes(self, sender: str | None = None) -> int:
        """Bytes held for pending transfers (chunk data plus overheads), in all or for one sender."""
        return self._reassembler.held_bytes(sender)

    def receive(self, topic: str, payload: bytes, expected_sender: str | None = None,
                check: Callable[[str, Message], None] | None = None) -> Received | None:
        """Take one payload from `topic`. `expected_sender`: refuse messages and chunks naming anyone else at once
        (sender_mismatch), e.g. the client id of an update topic. `check(base_topic, message)` may refuse each decoded
        message (a chunk, a manifest or a whole one) by raising DecodeError before anything is kept."""
        try:
            return self._receive(topic, payload, expected_sender, check)
        except DecodeError as exc:
            self.rejected[exc.reason] += 1
            raise

    def _receive(self, topic: str, payload: bytes, expected_sender: str | None,
                 check: Callable[[str, Message], None] | None) -> Received | None:
        self._reassembler.expire()
        base, is_chunk = base_topic(topic)
        try:
            message = decode_message(payload, self.max_payload, self._chunk_limits if is_chunk else self.limits)
        except DecodeError as exc:
            raise DecodeError(f"undecodable message on {topic} ({len(payload)} bytes): {exc}", exc.reason) from None
        if isinstance(message, ModelChunk) != is_chunk:
            raise DecodeError(f"{message.TYPE} message on {topic}", "wrong_type")
        if expected_sender is not None and message.sender != expected_sender:
            raise DecodeError(f"{message.TYPE} on {topic} names sender {wire_repr(message.sender)}, expected "
                              f"{expected_sender!r}", "sender_mismatch")
        if check is not None:
            check(base, message)
        scope = (base, message.sender)
        try:
            if isinstance(message, ModelChunk):
                if topic != chunk_topic(base, message.index):
                    raise DecodeError(f"chunk {message.index} published on {topic}", "bad_chunk")
                if sha256_hex(message.data) != message.sha256:
                    raise DecodeError(f"chunk {message.index}/{message.count} of transfer {message.transfer[:12]}: "
                                      f"its {len(message.data)} bytes do not match its sha256", "bad_chunk")
                whole = self._reassembler.add_chunk(message.transfer, message.index, message.data, scope,
                                                    message.sender)
                transfer = message.transfer
            elif isinstance(message, ChunkedMessage):
                transfer = message.manifest.sha256
                whole = self._reassembler.add_manifest(message.manifest, scope, message.sender)
                self._manifests[(scope, transfer)] = message
            else:
                return Received(base, message, len(payload))
        except ChunkError as exc:
            raise DecodeError(f"chunked transfer on {base}: {exc}", exc.reason) from None
        if whole is None:
            return None
        manifest = self._manifests.pop((scope, transfer))
        try:
            inner = decode_message(whole, self.max_payload, self.limits)
        except DecodeError as exc:
            raise DecodeError(f"undecodable reassembled message on {base} ({len(whole)} bytes): {exc}",
                              exc.reason) from None
        if isinstance(inner, (ModelChunk, ChunkedMessage)):
            raise DecodeError(f"a reassembled payload on {base} is itself a {inner.TYPE}", "wrong_type")
        if (inner.sender, inner.run) != (manifest.sender, manifest.run):
            raise DecodeError(f"reassembled {inner.TYPE} on {base} names sender {wire_repr(inner.sender)} of run "
                              f"{wire_repr(inner.run)}, its chunks {wire_repr(manifest.sender)} of "
                              f"{wire_repr(manifest.run)}", "sender_mismatch")
        return Received(base, inner, len(whole), manifest)

    def expire(self) -> list[ChunkedMessage]:
        """Drop incomplete transfers older than the timeout. Returns the manifests of announced transfers that
        expired since the last call (receive() expires too), the latest 64 at most; stray chunks go silently."""
        self._reassembler.expire()
        expired = list(self._expired)
        self._expired.clear()
        return expired

    def _dropped(self, dropped: Dropped) -> None:
        manifest = self._manifests.pop((dropped.scope, dropped.transfer_id), None)
        if manifest is not None and dropped.why == "expired":
            self._expired.append(manifest)
