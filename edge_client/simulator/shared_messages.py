"""Decoding shared by every simulated device of a process: the same payload on the same topic (the global model, the
coordinator's state, the run's end, the chunks of a chunked model) is decoded once per process, not once per device.

A payload is recognised by comparing its bytes with the last one decoded on its topic (a memcmp, exact)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from federation.protocol.chunked_transfer import ChunkedReceiver, base_topic
from federation.protocol.codec import DecodeError
from federation.protocol.messages import ChunkedMessage, Message, decode_message

log = logging.getLogger(__name__)


@dataclass
class _Last:
    payload: bytes
    message: Message | None      # None: a chunk, or a manifest whose chunks are not all here yet
    transfer: str = ""           # a manifest's transfer id (its payload's sha256)


class SharedMessages:
    """Per-process decode cache and reassembly of chunked messages. `decodes` counts the real decodes."""

    def __init__(self, max_payload: int) -> None:
        self.receiver = ChunkedReceiver(max_payload)
        self._last: dict[str, _Last] = {}
        self._completed: dict[str, Message] = {}   # transfer id -> the reassembled message (the latest few)
        self.decodes = 0

    def receive(self, topic: str, payload: bytes) -> tuple[Message | None, str]:
        """(the whole message, "") for a plain payload, or for the manifest or chunk that completed a chunked one;
        (None, transfer id) for a manifest still waiting for chunks (ask `completed` later); (None, "") for another
        chunk or a bad payload."""
        last = self._last.get(topic)
        if last is None or last.payload != payload:
            last = self._decode(topic, payload)
            self._last[topic] = last
        if last.message is None and last.transfer:
            done = self._completed.get(last.transfer)
            return (done, "") if done is not None else (None, last.transfer)
        return last.message, ""

    def completed(self, transfer: str) -> Message | None:
        return self._completed.get(transfer)

    def _decode(self, topic: str, payload: bytes) -> _Last:
        self.decodes += 1
        try:
            received = self.receiver.receive(topic, payload)
        except DecodeError as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)
            return _Last(payload, None)
        if received is None:
            base, is_chunk = base_topic(topic)
            if is_chunk:
                return _Last(payload, None)
            # A manifest (not complete yet): remember its transfer id; its chunks complete it later.
            try:
                manifest = decode_message(payload, self.receiver.max_payload)
            except DecodeError:
                return _Last(payload, None)
            transfer = manifest.manifest.sha256 if isinstance(manifest, ChunkedMessage) else ""
            return _Last(payload, None, transfer)
        if received.manifest is not None:
            self._completed[received.manifest.manifest.sha256] = received.message
            while len(self._completed) > 8:
                self._completed.pop(next(iter(self._completed)))
        return _Last(payload, received.message)
