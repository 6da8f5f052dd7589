"""Tests for federation.protocol.model_delivery and the deployed_model message: delivery in one message or chunked (PROTOCOL.md's
chunked transfer), hash checks, truncation, reordering, duplicates, superseded and timed-out transfers."""

from __future__ import annotations

import random

import pytest

from federation.protocol.byte_chunks import sha256_hex, split
from federation.protocol.codec import DecodeError, pack, unpack
from federation.protocol.deployed_model import DeploymentError, DeploymentInfo, TensorFormat, model_version
from federation.protocol.messages import ChunkedMessage, DeployedModel, ModelChunk, decode_message
from federation.protocol.chunked_transfer import outgoing_messages
from federation.protocol.model_delivery import Delivered, DeliveryReceiver, DeliveryRejected, Outgoing, delivery_messages
from federation.protocol.topics import RunTopics

TOPICS = RunTopics("fedmq", "demo")
MODEL = bytes(random.Random(1).getrandbits(8) for _ in range(10_000))
NEWER = bytes(random.Random(2).getrandbits(8) for _ in range(9_000))


def info(content: bytes = MODEL, round_: int = 3, run: str = "demo") -> DeploymentInfo:
    return DeploymentInfo(run=run, round=round_, variant="int8", sha256=sha256_hex(content), size=len(content),
                          input=TensorFormat((28, 28, 1), "uint8", 1.0, 0),
                          output=TensorFormat((10,), "uint8", 1 / 256, 0),
                          class_names=tuple("abcdefghij"), test_accuracy=0.9, test_examples=500)


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def deliver(receiver: DeliveryReceiver, messages) -> list[Delivered]:
    out = [receiver.handle(m.topic, m.payload) for m in messages]
    return [d for d in out if d is not None]


def test_a_small_model_goes_in_one_message() -> None:
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=len(MODEL) + 1000, sender="coordinator")
    assert [m.topic for m in messages] == ["fedmq/demo/model/deploy"]
    assert len(MODEL) < len(messages[0].payload) < len(MODEL) + 1000
    raw = unpack(messages[0].payload)
    assert raw["type"] == "deployed_model" and raw["model"] == MODEL
    assert raw["model_version"] == "demo@3" and raw["sha256"] == sha256_hex(MODEL)
    assert raw["input"] == {"shape": [28, 28, 1], "dtype": "uint8", "scale": 1.0, "zero_point": 0}
    delivered = deliver(DeliveryReceiver(TOPICS), messages)
    assert delivered == [Delivered(info(), MODEL)]


def test_a_large_model_goes_as_chunks_then_a_manifest() -> None:
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="coordinator")
    whole = b"".join(decode_message(m.payload).data for m in messages[:-1])
    inner = decode_message(whole)
    assert isinstance(inner, DeployedModel) and inner.model == MODEL and inner.info == info()
    assert [m.topic for m in messages] == [f"fedmq/demo/model/deploy/chunk/{i}" for i in range(3)] + \
        ["fedmq/demo/model/deploy"]
    assert all(len(m.payload) < 4096 + 400 for m in messages)
    manifest = decode_message(messages[-1].payload)
    assert isinstance(manifest, ChunkedMessage) and manifest.manifest == split(whole, 4096)[0]
    chunk = decode_message(messages[1].payload)
    assert isinstance(chunk, ModelChunk)
    assert (chunk.transfer, chunk.index, chunk.count) == (sha256_hex(whole), 1, 3)
    assert chunk.sha256 == sha256_hex(chunk.data) and chunk.data == whole[4096:8192]
    assert deliver(DeliveryReceiver(TOPICS), messages) == [Delivered(info(), MODEL)]


def test_chunks_reordered_and_duplicated_around_the_manifest_deliver_once() -> None:
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=1024, sender="coordinator")
    chunks, manifest = messages[:-1], messages[-1]
    rng = random.Random(7)
    shuffled = chunks + rng.sample(chunks, 4)
    rng.shuffle(shuffled)
    order = shuffled[:5] + [manifest] + shuffled[5:] + [manifest]
    assert deliver(DeliveryReceiver(TOPICS), order) == [Delivered(info(), MODEL)]


def test_a_corrupted_inline_model_is_rejected_by_its_hash() -> None:
    message = DeployedModel(run="demo", round=3, sender="coordinator", info=info(),
                            model=MODEL[:100] + bytes([MODEL[100] ^ 1]) + MODEL[101:])
    with pytest.raises(DeliveryRejected, match=r"hash to sha256 \w{12}\.\.\., its deployment announced") as exc:
        DeliveryReceiver(TOPICS).handle(TOPICS.deploy, message.encode())
    assert exc.value.reason == "bad_hash"
    short = DeployedModel(run="demo", round=3, sender="coordinator", info=info(), model=MODEL[:-1])
    with pytest.raises(DeliveryRejected, match="9999 bytes where its deployment announced 10000") as exc:
        DeliveryReceiver(TOPICS).handle(TOPICS.deploy, short.encode())
    assert exc.value.reason == "bad_hash"
    # the same, chunked: every chunk matches the manifest, but the model inside does not match its own hash
    bad = [Outgoing(t, p) for t, p in outgoing_messages(TOPICS.deploy, message.encode(), 4096, "demo", 3,
                                                        "coordinator")]
    with pytest.raises(DeliveryRejected, match="its deployment announced") as exc:
        deliver(DeliveryReceiver(TOPICS), bad)
    assert exc.value.reason == "bad_hash"
    # chunks and manifest from one sender wrapping another sender's deployment
    forged = [Outgoing(t, p) for t, p in outgoing_messages(TOPICS.deploy, message.encode(), 4096, "demo", 3, "x")]
    with pytest.raises(DeliveryRejected, match="names sender 'coordinator' .*its chunks 'x'") as exc:
        deliver(DeliveryReceiver(TOPICS), forged)
    assert exc.value.reason == "sender_mismatch"


def test_every_truncation_of_a_deployment_message_is_rejected() -> None:
    payload = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=len(MODEL) + 1000, sender="coordinator")[0].payload
    receiver = DeliveryReceiver(TOPICS)
    for cut in list(range(1, 200)) + list(range(200, len(payload), 997)):
        with pytest.raises(DeliveryRejected) as exc:
            receiver.handle(TOPICS.deploy, payload[:cut])
        assert exc.value.reason == "malformed", cut


def test_a_corrupted_chunk_is_rejected_and_the_transfer_times_out() -> None:
    clock = FakeClock()
    receiver = DeliveryReceiver(TOPICS, chunk_timeout_s=30, clock=clock)
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="coordinator")
    raw = unpack(messages[1].payload)
    raw["data"] = raw["data"][:-1] + b"\0"  # the chunk's own sha256 no longer matches
    with pytest.raises(DeliveryRejected, match="do not match its sha256") as exc:
        receiver.handle(messages[1].topic, pack(raw))
    assert exc.value.reason == "bad_hash"
    raw["sha256"] = sha256_hex(raw["data"])  # consistent with itself, but not with the manifest
    assert deliver(receiver, [messages[0], messages[2], messages[3]]) == []
    with pytest.raises(DeliveryRejected, match="does not match the manifest") as exc:
        receiver.handle(messages[1].topic, pack(raw))
    assert exc.value.reason == "bad_hash"
    assert receiver.pending == 1
    clock.now = 31
    assert [m.round for m in receiver.expire()] == [3]
    assert receiver.pending == 0


def test_a_transfer_superseded_by_a_newer_deployment_is_not_delivered() -> None:
    receiver = DeliveryReceiver(TOPICS)
    old = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="coordinator")
    new = delivery_messages(TOPICS, info(NEWER, round_=4), NEWER, chunk_bytes=4096, sender="coordinator")
    assert deliver(receiver, [old[-1], old[0], old[1]]) == []  # the old model is incomplete...
    assert deliver(receiver, new[-1:] + new[:2]) == []  # ...when the new one is announced
    assert deliver(receiver, [old[2]]) == [], "the old one completes, but it is not the latest"
    assert deliver(receiver, new[2:-1]) == [Delivered(info(NEWER, round_=4), NEWER)]
    inline = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=1 << 20, sender="coordinator")
    assert deliver(receiver, new[-1:] + new[:-2]) == []
    assert deliver(receiver, inline + new[-2:-1]) == [Delivered(info(), MODEL)], "a one-message deployment " \
        "supersedes a pending chunked one"


def test_stray_chunks_without_a_manifest_expire_silently() -> None:
    clock = FakeClock()
    receiver = DeliveryReceiver(TOPICS, chunk_timeout_s=5, clock=clock)
    old = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="coordinator")
    assert deliver(receiver, old[:2]) == []
    clock.now = 6
    assert receiver.expire() == [] and receiver.pending == 0


@pytest.mark.parametrize("change, reason", [
    (lambda raw: raw.update(run="other"), "wrong_run"),
    (lambda raw: raw.update(type="run_end", reason="completed"), "wrong_type"),
    (lambda raw: raw.update(version=2), "version"),
])
def test_messages_for_another_run_type_or_version_are_rejected(change, reason: str) -> None:
    raw = unpack(delivery_messages(TOPICS, info(), MODEL, chunk_bytes=1 << 20, sender="c")[0].payload)
    change(raw)
    with pytest.raises(DeliveryRejected) as exc:
        DeliveryReceiver(TOPICS).handle(TOPICS.deploy, pack(raw))
    assert exc.value.reason == reason


def test_a_chunk_on_the_wrong_topic_and_an_empty_retained_payload() -> None:
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="c")
    receiver = DeliveryReceiver(TOPICS)
    with pytest.raises(DeliveryRejected, match="chunk 0 published on fedmq/demo/model/deploy/chunk/2"):
        receiver.handle(TOPICS.deploy_chunk(2), messages[0].payload)
    assert receiver.handle(TOPICS.deploy, b"") is None
    with pytest.raises(DeliveryRejected, match="unexpected topic"):
        receiver.handle("fedmq/demo/model/global", messages[0].payload)


def test_models_over_the_size_limit_are_refused() -> None:
    receiver = DeliveryReceiver(TOPICS, max_model_bytes=5000)
    with pytest.raises(DeliveryRejected, match="10000 bytes exceed the limit of 5000") as exc:
        receiver.handle(TOPICS.deploy, delivery_messages(TOPICS, info(), MODEL, 1 << 20, "c")[0].payload)
    assert exc.value.reason == "too_large"
    with pytest.raises(DeliveryRejected, match="exceeds the limit of 5000 model bytes") as exc:
        receiver.handle(TOPICS.deploy, delivery_messages(TOPICS, info(MODEL * 10), MODEL * 10, 4096, "c")[-1].payload)
    assert exc.value.reason == "too_large"


def test_deployed_model_decoding_checks_its_fields() -> None:
    good = unpack(DeployedModel(run="demo", round=3, sender="c", info=info(), model=MODEL).encode())
    cases = [
        ({k: v for k, v in good.items() if k != "model"}, "missing field 'model'"),
        ({**good, "model": None}, "field 'model' has type NoneType"),
        ({**good, "model": "text"}, "field 'model' has type str"),
        ({**good, "size": "big"}, "size 'big' is not an int"),
        ({**good, "sha256": "0" * 63}, "sha256"),
        ({**good, "variant": "int4"}, "variant 'int4'"),
        ({**good, "input": {"shape": [28, 28], "dtype": "complex64"}}, "input: dtype"),
        ({**good, "output": {"shape": [0], "dtype": "float32"}}, "output: bad shape"),
        ({**good, "class_names": ["a", "b"]}, "2 class names for a model with 10 outputs"),
        ({**good, "test_accuracy": "high"}, "test_accuracy"),
        ({**good, "format": "onnx"}, "format 'onnx'"),
    ]
    for raw, pattern in cases:
        with pytest.raises(DecodeError, match=pattern):
            decode_message(pack(raw))


def test_deployment_info_json_round_trip() -> None:
    original = info()
    assert DeploymentInfo.from_json(original.to_json()) == original
    assert original.to_json()["model_version"] == model_version("demo", 3) == "demo@3"
    with pytest.raises(DeploymentError, match="lacks run or round"):
        DeploymentInfo.from_json({"round": 1})


def _stray_chunk(i: int, size: int, sender: str = "coordinator") -> Outgoing:
    data = (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
    chunk = ModelChunk(run="demo", round=9, sender=sender, transfer=sha256_hex(b"stray %d" % i), index=0, count=2,
                       sha256=sha256_hex(data), data=data)
    return Outgoing(TOPICS.deploy_chunk(0), chunk.encode())


def _stray_chunk_args(i: int, size: int, sender: str = "coordinator") -> tuple[str, bytes]:
    chunk = _stray_chunk(i, size, sender)
    return chunk.topic, chunk.payload


def test_stray_chunks_on_the_deploy_topic_neither_pile_up_nor_block_the_next_deployment() -> None:
    receiver = DeliveryReceiver(TOPICS, max_model_bytes=100_000)
    for i in range(40):  # 2 MB of chunks of transfers never announced
        assert receiver.handle(*_stray_chunk_args(i, 50_000, sender=f"mallory-{i % 3}")) is None
    assert receiver.receiver.held_bytes() <= 1.25 * (100_000 + 64 * 1024)
    messages = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=4096, sender="coordinator")
    assert deliver(receiver, messages) == [Delivered(info(), MODEL)]


def test_deploy_chunks_expire_while_deployments_keep_coming() -> None:
    clock = FakeClock()
    receiver = DeliveryReceiver(TOPICS, chunk_timeout_s=60, clock=clock)
    assert receiver.handle(*_stray_chunk_args(0, 1000)) is None
    inline = delivery_messages(TOPICS, info(), MODEL, chunk_bytes=1 << 20, sender="coordinator")
    for second in range(1, 62):
        clock.now = float(second)
        deliver(receiver, inline)
    assert receiver.pending == 0
