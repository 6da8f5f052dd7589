"""Split a large byte string into hashed chunks, and reassemble them in any order, with duplicates and timeouts.

Transport-agnostic: a manifest (size and sha256 of the whole and of each chunk), indexed chunks; see PROTOCOL.md."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

MIN_CHUNK_BYTES = 1024
MAX_CHUNKS = 65536
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ChunkError(ValueError):
    """A manifest or chunk that can't be used; `reason` is a short code (bad_manifest, bad_chunk, too_large...)."""

    def __init__(self, message: str, reason: str = "bad_chunk") -> None:
        super().__init__(message)
        self.reason = reason


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256_HEX.fullmatch(value))


@dataclass(frozen=True)
class ChunkManifest:
    """What a complete transfer looks like: its total size and sha256, and the sha256 of every chunk.

    Chunk i holds bytes [i * chunk_size, min((i + 1) * chunk_size, size)); `sha256` names the transfer."""

    sha256: str
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]

    def __post_init__(self) -> None:
        if not is_sha256_hex(self.sha256):
            raise ChunkError(f"manifest: sha256 {self.sha256!r} is not 64 lowercase hex digits", "bad_manifest")
        if self.size < 1 or self.chunk_size < 1:
            raise ChunkError(f"manifest: size {self.size} and chunk_size {self.chunk_size} must be positive",
                             "bad_manifest")
        expected = -(-self.size // self.chunk_size)
        if len(self.chunk_sha256) != expected:
            raise ChunkError(f"manifest: {len(self.chunk_sha256)} chunk hashes for {self.size} bytes in chunks of "
                             f"{self.chunk_size} ({expected} expected)", "bad_manifest")
        if expected > MAX_CHUNKS:
            raise ChunkError(f"manifest: {expected} chunks, more than {MAX_CHUNKS}", "bad_manifest")
        bad = next((h for h in self.chunk_sha256 if not is_sha256_hex(h)), None)
        if bad is not None:
            raise ChunkError(f"manifest: chunk hash {bad!r} is not 64 lowercase hex digits", "bad_manifest")

    @property
    def count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        """The exact byte length chunk `index` must have."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_wire(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "chunk_size": self.chunk_size,
                "chunk_sha256": list(self.chunk_sha256)}

    @classmethod
    def from_wire(cls, raw: Any) -> "ChunkManifest":
        if not isinstance(raw, dict):
            raise ChunkError(f"manifest is a {type(raw).__name__}, expected a map", "bad_manifest")
        try:
            sha, size, chunk_size, hashes = raw["sha256"], raw["size"], raw["chunk_size"], raw["chunk_sha256"]
        except KeyError as exc:
            raise ChunkError(f"manifest lacks {exc.args[0]!r}", "bad_manifest") from None
        for name, value in (("size", size), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ChunkError(f"manifest: {name} is a {type(value).__name__}, expected an int", "bad_manifest")
        if not isinstance(hashes, list):
            raise ChunkError("manifest: chunk_sha256 is not a list", "bad_manifest")
        return cls(sha256=sha, size=size, chunk_size=chunk_size, chunk_sha256=tuple(hashes))


def split(data: bytes, chunk_size: int) -> tuple[ChunkManifest, list[bytes]]:
    """Cut `data` into chunks of `chunk_size` bytes (the last one shorter) and describe them in a manifest."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not data:
        raise ValueError("nothing to split: empty data")
    view = memoryview(data)
    chunks = [bytes(view[i:i + chunk_size]) for i in range(0, len(data), chunk_size)]
    manifest = ChunkManifest(sha256_hex(data), len(data), chunk_size, tuple(sha256_hex(c) for c in chunks))
    return manifest, chunks


@dataclass
class _Transfer:
    started: float
    manifest: ChunkManifest | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)

    @property
    def held(self) -> int:
        return sum(len(c) for c in self.chunks.values())


class Reassembler:
    """Collects the chunks of transfers, keyed by the whole payload's sha256, until each is complete.

    Chunks may come before or after their manifest, in any order, and more than once. A chunk whose bytes do not
    match its manifest hash raises ChunkError and is not kept. A transfer not complete `timeout_s` after its first
    piece is dropped by `expire()`. At most `max_bytes` of chunk data are held across all transfers."""

    def __init__(self, timeout_s: float = 60.0, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._transfers: dict[str, _Transfer] = {}

    @property
    def pending(self) -> dict[str, tuple[int, int | None]]:
        """Transfers in progress: sha256 -> (chunks held, chunks expected or None before the manifest)."""
        return {k: (len(t.chunks), t.manifest.count if t.manifest else None) for k, t in self._transfers.items()}

    def held_bytes(self) -> int:
        return sum(t.held for t in self._transfers.values())

    def add_manifest(self, manifest: ChunkManifest) -> bytes | None:
        """Register a transfer; returns its bytes at once if every chunk is already here."""
        if manifest.size > self.max_bytes:
            raise ChunkError(f"transfer {manifest.sha256[:12]}: {manifest.size} bytes exceed the limit of "
                             f"{self.max_bytes}", "too_large")
        transfer = self._transfers.setdefault(manifest.sha256, _Transfer(self._clock()))
        if transfer.manifest is not None:
            if transfer.manifest != manifest:
                raise ChunkError(f"transfer {manifest.sha256[:12]}: a second, different manifest", "bad_manifest")
            return None
        transfer.manifest = manifest
        for index in list(transfer.chunks):  # chunks that came first: keep only those the manifest vouches for
            data = transfer.chunks[index]
            if index >= manifest.count or sha256_hex(data) != manifest.chunk_sha256[index]:
                log.warning("transfer %s: dropped chunk %d that does not match the manifest", manifest.sha256[:12],
                            index)
                del transfer.chunks[index]
        return self._complete_if_done(manifest.sha256, transfer)

    def add_chunk(self, transfer_id: str, index: int, data: bytes) -> bytes | None:
        """Add chunk `index` of transfer `transfer_id`; returns the whole payload when this chunk completes it."""
        if not is_sha256_hex(transfer_id):
            raise ChunkError(f"chunk names transfer {transfer_id!r}, not a sha256")
        if index < 0 or index >= MAX_CHUNKS:
            raise ChunkError(f"transfer {transfer_id[:12]}: chunk index {index} out of range")
        transfer = self._transfers.get(transfer_id)
        manifest = transfer.manifest if transfer else None
        if manifest is not None:
            if index >= manifest.count:
                raise ChunkError(f"transfer {transfer_id[:12]}: chunk {index} but the manifest lists {manifest.count}")
            if len(data) != manifest.chunk_length(index) or sha256_hex(data) != manifest.chunk_sha256[index]:
                raise ChunkError(f"transfer {transfer_id[:12]}: chunk {index} ({len(data)} bytes) does not match "
                                 f"the manifest's sha256 {manifest.chunk_sha256[index][:12]}")
        if transfer is not None and index in transfer.chunks:
            return None  # duplicate
        if self.held_bytes() + len(data) > self.max_bytes:
            raise ChunkError(f"transfer {transfer_id[:12]}: chunk {index} would hold more than {self.max_bytes} "
                             "bytes of pending chunks", "too_large")
        if transfer is None:
            transfer = self._transfers[transfer_id] = _Transfer(self._clock())
        transfer.chunks[index] = bytes(data)
        return self._complete_if_done(transfer_id, transfer)

    def expire(self) -> list[str]:
        """Drop transfers older than the timeout; return their ids."""
        now = self._clock()
        old = [k for k, t in self._transfers.items() if now - t.started > self.timeout_s]
        for key in old:
            t = self._transfers.pop(key)
            if t.manifest is None:  # stray chunks, e.g. retained ones of an older transfer: nothing was promised
                log.debug("transfer %s: %d chunk(s) without a manifest after %.0f s; dropped", key[:12],
                          len(t.chunks), self.timeout_s)
            else:
                log.warning("transfer %s: incomplete after %.0f s (%d of %d chunks); dropped", key[:12],
                            self.timeout_s, len(t.chunks), t.manifest.count)
        return old

    def discard(self, transfer_id: str) -> None:
        self._transfers.pop(transfer_id, None)

    def _complete_if_done(self, key: str, transfer: _Transfer) -> bytes | None:
        manifest = transfer.manifest
        if manifest is None or len(transfer.chunks) < manifest.count:
            return None
        data = b"".join(transfer.chunks[i] for i in range(manifest.count))
        del self._transfers[key]
        if len(data) != manifest.size or sha256_hex(data) != manifest.sha256:  # chunk hashes matched: can't happen
            raise ChunkError(f"transfer {key[:12]}: reassembled bytes do not match the manifest's sha256")
        return data
