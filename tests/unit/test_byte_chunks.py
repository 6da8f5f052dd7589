"""Tests for federation.protocol.byte_chunks: split and reassemble in any order, with duplicates, corruption and timeouts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.byte_chunks import ChunkError, ChunkManifest, Reassembler, sha256_hex, split

DATA = bytes(random.Random(0).getrandbits(8) for _ in range(10_000))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_split_cuts_equal_chunks_and_a_shorter_last_one() -> None:
    manifest, chunks = split(DATA, 4096)
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert b"".join(chunks) == DATA
    assert manifest.sha256 == sha256_hex(DATA) and manifest.size == len(DATA) and manifest.count == 3
    assert manifest.chunk_sha256 == tuple(sha256_hex(c) for c in chunks)
    assert [manifest.chunk_length(i) for i in range(3)] == [4096, 4096, 1808]


def test_split_of_an_exact_multiple_and_of_a_single_chunk() -> None:
    assert [len(c) for c in split(DATA[:8192], 4096)[1]] == [4096, 4096]
    manifest, chunks = split(DATA[:10], 4096)
    assert chunks == [DATA[:10]] and manifest.count == 1
    with pytest.raises(ValueError, match="empty"):
        split(b"", 10)
    with pytest.raises(ValueError, match="positive"):
        split(DATA, 0)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), chunk_size=st.integers(1, 700), seed=st.integers(0, 2**32),
       manifest_at=st.floats(0, 1))
def test_any_order_with_duplicates_reassembles_exactly_once(data: bytes, chunk_size: int, seed: int,
                                                            manifest_at: float) -> None:
    manifest, chunks = split(data, chunk_size)
    rng = random.Random(seed)
    pieces = list(enumerate(chunks)) + [(i, c) for i, c in enumerate(chunks) if rng.random() < 0.3]
    rng.shuffle(pieces)
    events: list[tuple[int, bytes] | None] = list(pieces)
    events.insert(int(manifest_at * len(events)), None)  # None: the manifest arrives here
    r = Reassembler()
    results = []
    for event in events:
        out = r.add_manifest(manifest) if event is None else r.add_chunk(manifest.sha256, *event)
        if out is not None:
            results.append(out)
    assert results == [data]  # late duplicates after completion complete nothing without a new manifest


def test_a_corrupted_chunk_is_refused_and_a_good_copy_still_completes() -> None:
    manifest, chunks = split(DATA, 4096)
    r = Reassembler()
    assert r.add_manifest(manifest) is None
    bad = bytearray(chunks[1])
    bad[17] ^= 0xFF
    with pytest.raises(ChunkError, match="chunk 1 .* does not match"):
        r.add_chunk(manifest.sha256, 1, bytes(bad))
    with pytest.raises(ChunkError, match="does not match"):
        r.add_chunk(manifest.sha256, 2, chunks[2][:-1])  # truncated
    assert r.add_chunk(manifest.sha256, 0, chunks[0]) is None
    assert r.add_chunk(manifest.sha256, 2, chunks[2]) is None
    assert r.add_chunk(manifest.sha256, 1, chunks[1]) == DATA


def test_chunks_before_the_manifest_are_checked_when_it_arrives() -> None:
    manifest, chunks = split(DATA, 4096)
    r = Reassembler()
    r.add_chunk(manifest.sha256, 0, chunks[0])
    r.add_chunk(manifest.sha256, 1, b"x" * 4096)  # wrong bytes: dropped when the manifest comes
    r.add_chunk(manifest.sha256, 2, chunks[2])
    assert r.add_manifest(manifest) is None
    assert r.pending == {manifest.sha256: (2, 3)}
    assert r.add_chunk(manifest.sha256, 1, chunks[1]) == DATA
    assert r.pending == {}


def test_an_index_beyond_the_manifest_and_a_conflicting_manifest_are_refused() -> None:
    manifest, chunks = split(DATA, 4096)
    r = Reassembler()
    r.add_manifest(manifest)
    with pytest.raises(ChunkError, match="chunk 3 but the manifest lists 3"):
        r.add_chunk(manifest.sha256, 3, chunks[0])
    other = ChunkManifest(manifest.sha256, manifest.size, 8192, (sha256_hex(DATA[:8192]), sha256_hex(DATA[8192:])))
    with pytest.raises(ChunkError, match="different manifest") as info:
        r.add_manifest(other)
    assert info.value.reason == "bad_manifest"
    with pytest.raises(ChunkError, match="not a sha256"):
        r.add_chunk("abc", 0, chunks[0])


def test_incomplete_transfers_expire_after_the_timeout() -> None:
    clock = FakeClock()
    manifest, chunks = split(DATA, 4096)
    r = Reassembler(timeout_s=10, clock=clock)
    r.add_manifest(manifest)
    r.add_chunk(manifest.sha256, 0, chunks[0])
    clock.now = 9.0
    assert r.expire() == []
    clock.now = 10.5
    assert [d.transfer_id for d in r.expire()] == [manifest.sha256]
    assert r.pending == {} and r.held_bytes() == 0
    # the rest arriving later starts over: nothing completes without chunk 0 and the manifest
    assert r.add_chunk(manifest.sha256, 1, chunks[1]) is None
    assert r.add_chunk(manifest.sha256, 2, chunks[2]) is None
    assert r.pending == {manifest.sha256: (2, None)}


def test_memory_is_bounded() -> None:
    manifest, chunks = split(DATA, 4096)
    r = Reassembler(max_bytes=6000)
    with pytest.raises(ChunkError, match="exceed the limit") as info:
        r.add_manifest(manifest)
    assert info.value.reason == "too_large"
    r.add_chunk(manifest.sha256, 0, chunks[0])
    with pytest.raises(ChunkError, match="more than 6000 bytes") as info:
        r.add_chunk(manifest.sha256, 1, chunks[1])
    assert info.value.reason == "too_large"


def test_manifest_wire_round_trip_and_validation() -> None:
    manifest, _ = split(DATA, 4096)
    assert ChunkManifest.from_wire(manifest.to_wire()) == manifest
    wire = manifest.to_wire()
    for key, value, pattern in [
        ("sha256", "ABC", "sha256"), ("size", 0, "positive"), ("size", "1", "size is a str"),
        ("chunk_size", -1, "positive"), ("chunk_size", True, "chunk_size is a bool"),
        ("chunk_sha256", wire["chunk_sha256"][:2], r"2 chunk hashes .* \(3 expected\)"),
        ("chunk_sha256", [*wire["chunk_sha256"][:2], 5], "chunk hash 5"), ("chunk_sha256", "x", "not a list"),
    ]:
        with pytest.raises(ChunkError, match=pattern) as info:
            ChunkManifest.from_wire({**wire, key: value})
        assert info.value.reason == "bad_manifest"
    with pytest.raises(ChunkError, match="lacks 'size'"):
        ChunkManifest.from_wire({k: v for k, v in wire.items() if k != "size"})
    with pytest.raises(ChunkError, match="expected a map"):
        ChunkManifest.from_wire([1, 2])
