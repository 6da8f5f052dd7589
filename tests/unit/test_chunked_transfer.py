"""Chunked transfer of whole fedmq messages: split, then reassemble in any order with duplicates."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from federation.chunked_transfer import ChunkedReceiver, base_topic, outgoing_messages
from federation.codec import DecodeError
from federation.messages import ModelChunk, Update, decode_message

TOPIC = "fedmq/run1/update/dev-1"


def _update(sender: str = "dev-1", size: int = 20_000) -> bytes:
    weights = [("w", np.arange(size, dtype=np.float32))]
    return Update(run="run1", round=2, sender=sender, num_examples=10, tensors=weights).encode()


def test_small_payload_goes_as_is() -> None:
    payload = _update(size=10)
    assert outgoing_messages(TOPIC, payload, 4096, "run1", 2, "dev-1") == [(TOPIC, payload)]
    assert outgoing_messages(TOPIC, payload, 0, "run1", 2, "dev-1") == [(TOPIC, payload)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), chunk=st.integers(1024, 30_000), dupes=st.integers(0, 5))
def test_reassembles_in_any_order_with_duplicates(seed: int, chunk: int, dupes: int) -> None:
    payload = _update()
    messages = outgoing_messages(TOPIC, payload, chunk, "run1", 2, "dev-1")
    assert len(messages) == -(-len(payload) // chunk) + 1
    assert all(base_topic(t) == (TOPIC, True) for t, _ in messages[:-1]) and messages[-1][0] == TOPIC
    rng = random.Random(seed)
    delivery = messages + [rng.choice(messages) for _ in range(dupes)]
    rng.shuffle(delivery)
    receiver = ChunkedReceiver(max_payload=10_000_000)
    results = [r for r in (receiver.receive(t, p) for t, p in delivery) if r is not None]
    assert len(results) >= 1
    first = results[0]
    assert first.topic == TOPIC and first.size == len(payload)
    assert isinstance(first.message, Update) and np.array_equal(first.message.tensors[0][1],
                                                                decode_message(payload).tensors[0][1])


def test_a_tampered_chunk_is_rejected_and_the_transfer_completes_with_the_good_one() -> None:
    messages = outgoing_messages(TOPIC, _update(), 8192, "run1", 2, "dev-1")
    receiver = ChunkedReceiver(max_payload=10_000_000)
    manifest_topic, manifest = messages[-1]
    assert receiver.receive(manifest_topic, manifest) is None
    topic, good = messages[0]
    chunk = decode_message(good)
    assert isinstance(chunk, ModelChunk)
    bad = ModelChunk(run="run1", round=2, sender="dev-1", transfer=chunk.transfer, index=0, count=chunk.count,
                     sha256=chunk.sha256, data=b"\x00" * len(chunk.data)).encode()
    with pytest.raises(DecodeError, match="does not match"):
        receiver.receive(topic, bad)
    results = [receiver.receive(t, p) for t, p in messages[:-1]]
    assert results[-1] is not None and isinstance(results[-1].message, Update)


def test_chunks_of_someone_else_are_refused() -> None:
    messages = outgoing_messages(TOPIC, _update(sender="dev-2"), 8192, "run1", 2, "dev-1")
    receiver = ChunkedReceiver(max_payload=10_000_000)
    for topic, payload in messages[:-1]:
        assert receiver.receive(topic, payload) is None
    with pytest.raises(DecodeError) as info:
        receiver.receive(*messages[-1])
    assert info.value.reason == "sender_mismatch"


def test_a_chunk_on_a_plain_topic_and_a_whole_message_on_a_chunk_topic_are_refused() -> None:
    messages = outgoing_messages(TOPIC, _update(), 8192, "run1", 2, "dev-1")
    receiver = ChunkedReceiver(max_payload=10_000_000)
    with pytest.raises(DecodeError):
        receiver.receive(TOPIC, messages[0][1])
    with pytest.raises(DecodeError):
        receiver.receive(TOPIC + "/chunk/0", _update(size=10))


def test_incomplete_transfers_expire() -> None:
    messages = outgoing_messages(TOPIC, _update(), 8192, "run1", 2, "dev-1")
    receiver = ChunkedReceiver(max_payload=10_000_000, timeout_s=0.0)
    for topic, payload in messages[1:]:
        assert receiver.receive(topic, payload) is None
    assert len(receiver.expire()) == 1
    assert receiver.receive(*messages[0]) is None, "the rest was dropped; one chunk alone completes nothing"


def test_whole_payload_over_the_limit_is_refused() -> None:
    messages = outgoing_messages(TOPIC, _update(), 8192, "run1", 2, "dev-1")
    receiver = ChunkedReceiver(max_payload=50_000)
    with pytest.raises(DecodeError) as info:
        receiver.receive(*messages[-1])
    assert info.value.reason == "too_large"
