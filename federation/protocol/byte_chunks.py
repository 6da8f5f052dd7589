"""Split a large byte string into hashed chunks, and reassemble them in any order, with duplicates and timeouts.

Transport-agnostic: a manifest (size and sha256 of the whole and of each chunk), indexed chunks; see PROTOCOL.md."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from federation.errors import FedmqError
from federation.protocol.codec import clip_text, wire_repr

log = logging.getLogger(__name__)

MIN_CHUNK_BYTES = 1024
MAX_CHUNKS = 65536
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ChunkError(FedmqError, ValueError):
    """A manifest or chunk that can't be used; `reason` is a short code (bad_manifest, bad_chunk, too_large...)."""

    def __init__(self, message: str, reason: str = "bad_chunk") -> None:
        super().__init__(clip_text(message))
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
            raise ChunkError(f"manifest: sha256 {wire_repr(self.sha256)} is not 64 lowercase hex digits",
                             "bad_manifest")
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
            raise ChunkError(f"manifest: chunk hash {wire_repr(bad)} is not 64 lowercase hex digits", "bad_manifest")

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
            raise ChunkError(f"manifest lacks {wire_repr(exc.args[0])}", "bad_manifest") from None
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


# What a held transfer costs beyond its chunk bytes, charged against the byte caps so that many tiny chunks or
# transfers, or a manifest of 65536 hashes, can't hold more memory than the caps say.
CHUNK_OVERHEAD = 128      # the bytes object and its dict slot
TRANSFER_OVERHEAD = 1024  # the transfer's record and its places in the ordered indexes
MANIFEST_HASH_COST = 128  # one hex digest (a 64-character str) in a manifest's tuple

TransferKey = tuple[Hashable, str]  # (scope, transfer id): the scope keeps transfers of different topics/senders apart


@dataclass
class _Transfer:
    started: float
    owner: str
    manifest: ChunkManifest | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    cost: int = TRANSFER_OVERHEAD  # bytes charged against the caps: chunks, overheads, the manifest's hashes


@dataclass(frozen=True)
class Dropped:
    """A transfer given up before it completed: `why` is expired or evicted."""

    scope: Hashable
    transfer_id: str
    owner: str
    manifest: ChunkManifest | None
    chunks: int
    why: str


class Reassembler:
    """Collects the chunks of transfers until each is complete, with memory and time bounded for hostile input.

    Chunks may come before or after their manifest, in any order, and more than once. A chunk whose bytes do not
    match its manifest hash raises ChunkError and is not kept. A transfer is keyed by (scope, sha256), so that one
    scope (a topic and sender, say) can't touch another's transfers, and charged to its `owner` (the sender).

    Bounds: a transfer of at most `max_transfer_bytes`; at most `max_bytes` held in all (chunk bytes plus overheads,
    see CHUNK_OVERHEAD), at most `max_owner_bytes` per owner. When a chunk would pass an owner's cap, that owner's
    oldest other transfers are dropped; when it would pass the total, the oldest transfers without a manifest (stray
    chunks: nothing was promised), of any owner. If that is not enough the chunk is refused (too_large). Transfers
    not complete `timeout_s` after their first piece are dropped by `expire()`, which costs O(1) per dropped
    transfer and nothing otherwise, so callers run it on every message. Every operation is O(1) in the number of
    transfers held, plus the size of what it adds."""

    def __init__(self, timeout_s: float = 60.0, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic, max_owner_bytes: int | None = None,
                 max_transfer_bytes: int | None = None, on_drop: Callable[[Dropped], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_owner_bytes = max_owner_bytes or max_bytes
        self.max_transfer_bytes = max_transfer_bytes or max_bytes
        self._clock = clock
        self._on_drop = on_drop
        self._transfers: OrderedDict[TransferKey, _Transfer] = OrderedDict()  # oldest first
        self._orphans: OrderedDict[TransferKey, None] = OrderedDict()  # transfers without a manifest, oldest first
        self._by_owner: dict[str, OrderedDict[TransferKey, None]] = {}
        self._held = 0
        self._held_by_owner: dict[str, int] = {}
        self.dropped: Counter[str] = Counter()  # transfers given up, by why: expired, evicted
        self._last_warning = -math.inf

    @property
    def pending(self) -> dict[str, tuple[int, int | None]]:
        """Transfers in progress: sha256 -> (chunks held, chunks expected or None before the manifest)."""
        return {k[1]: (len(t.chunks), t.manifest.count if t.manifest else None) for k, t in self._transfers.items()}

    def __len__(self) -> int:
        return len(self._transfers)

    def held_bytes(self, owner: str | None = None) -> int:
        """Bytes charged for what is held (chunk data plus overheads), in all or by one owner."""
        return self._held if owner is None else self._held_by_owner.get(owner, 0)

    def add_manifest(self, manifest: ChunkManifest, scope: Hashable = "", owner: str = "") -> bytes | None:
        """Register a transfer; returns its bytes at once if every chunk is already here."""
        if manifest.size > self.max_transfer_bytes:
            raise ChunkError(f"transfer {manifest.sha256[:12]}: {manifest.size} bytes exceed the limit of "
                             f"{self.max_transfer_bytes}", "too_large")
        self.expire()
        key = (scope, manifest.sha256)
        transfer = self._transfers.get(key)
        if transfer is not None and transfer.manifest is not None:
            if transfer.manifest != manifest:
                raise ChunkError(f"transfer {manifest.sha256[:12]}: a second, different manifest", "bad_manifest")
            return None
        cost = manifest.count * MANIFEST_HASH_COST
        self._make_room(key, owner, cost + (0 if transfer else TRANSFER_OVERHEAD))
        if transfer is None:
            transfer = self._new(key, owner)
        self._charge(transfer, cost)
        transfer.manifest = manifest
        self._orphans.pop(key, None)
        mismatched = [i for i, data in transfer.chunks.items()  # chunks that came first: keep those it vouches for
                      if i >= manifest.count or sha256_hex(data) != manifest.chunk_sha256[i]]
        for index in mismatched:
            self._charge(transfer, -(len(transfer.chunks.pop(index)) + CHUNK_OVERHEAD))
        if mismatched:
            log.debug("transfer %s: dropped %d chunk(s) that do not match the manifest", manifest.sha256[:12],
                      len(mismatched))
        return self._complete_if_done(key, transfer)

    def add_chunk(self, transfer_id: str, index: int, data: bytes, scope: Hashable = "",
                  owner: str = "") -> bytes | None:
        """Add chunk `index` of transfer `transfer_id`; returns the whole payload when this chunk completes it."""
        if not is_sha256_hex(transfer_id):
            raise ChunkError(f"chunk names transfer {wire_repr(transfer_id)}, not a sha256")
        if index < 0 or index >= MAX_CHUNKS:
            raise ChunkError(f"transfer {transfer_id[:12]}: chunk index {index} out of range")
        self.expire()
        key = (scope, transfer_id)
        transfer = self._transfers.get(key)
        manifest = transfer.manifest if transfer else None
        if manifest is not None:
            if index >= manifest.count:
                raise ChunkError(f"transfer {transfer_id[:12]}: chunk {index} but the manifest lists {manifest.count}")
            if len(data) != manifest.chunk_length(index) or sha256_hex(data) != manifest.chunk_sha256[index]:
                raise ChunkError(f"transfer {transfer_id[:12]}: chunk {index} ({len(data)} bytes) does not match "
                                 f"the manifest's sha256 {manifest.chunk_sha256[index][:12]}")
        elif len(data) > self.max_transfer_bytes:
            raise ChunkError(f"transfer {transfer_id[:12]}: a chunk of {len(data)} bytes exceeds the limit of "
                             f"{self.max_transfer_bytes}", "too_large")
        if transfer is not None and index in transfer.chunks:
            return None  # duplicate
        cost = len(data) + CHUNK_OVERHEAD
        self._make_room(key, owner, cost + (0 if transfer else TRANSFER_OVERHEAD))
        if transfer is None:
            transfer = self._new(key, owner)
        transfer.chunks[index] = bytes(data)
        self._charge(transfer, cost)
        return self._complete_if_done(key, transfer)

    def expire(self) -> list[Dropped]:
        """Drop transfers older than the timeout, oldest first; return them."""
        now = self._clock()
        dropped = []
        while self._transfers:
            key, transfer = next(iter(self._transfers.items()))
            if now - transfer.started <= self.timeout_s:
                break
            dropped.append(self._drop(key, "expired"))
        announced = [d for d in dropped if d.manifest is not None]
        if len(dropped) > len(announced):  # stray chunks, e.g. retained ones of an older transfer: nothing promised
            log.debug("%d transfer(s) of chunks without a manifest dropped after %.0f s",
                      len(dropped) - len(announced), self.timeout_s)
        if announced:
            first = announced[0]
            level = logging.WARNING if now - self._last_warning >= 1.0 else logging.DEBUG  # one warning a second
            self._last_warning = now if level == logging.WARNING else self._last_warning
            log.log(level, "transfer %s: incomplete after %.0f s (%d of %d chunks); dropped%s",
                    first.transfer_id[:12], self.timeout_s, first.chunks,
                    first.manifest.count if first.manifest is not None else 0,
                    f", with {len(announced) - 1} other(s)" if len(announced) > 1 else "")
        return dropped

    def discard(self, transfer_id: str, scope: Hashable = "") -> None:
        if (scope, transfer_id) in self._transfers:
            self._remove((scope, transfer_id))

    def _new(self, key: TransferKey, owner: str) -> _Transfer:
        transfer = self._transfers[key] = _Transfer(self._clock(), owner)
        self._orphans[key] = None
        self._by_owner.setdefault(owner, OrderedDict())[key] = None
        self._held += TRANSFER_OVERHEAD
        self._held_by_owner[owner] = self._held_by_owner.get(owner, 0) + TRANSFER_OVERHEAD
        return transfer

    def _charge(self, transfer: _Transfer, cost: int) -> None:
        transfer.cost += cost
        self._held += cost
        self._held_by_owner[transfer.owner] += cost

    def _make_room(self, key: TransferKey, owner: str, cost: int) -> None:
        """Drop others' stray chunks and this owner's older transfers until `cost` more bytes fit both caps."""
        mine: dict[TransferKey, None] = self._by_owner.get(owner, {})
        while self._held_by_owner.get(owner, 0) + cost > self.max_owner_bytes:
            victim = next((k for k in mine if k != key), None)
            if victim is None:
                raise ChunkError(f"transfer {key[1][:12]}: {owner or 'this sender'} would hold more than "
                                 f"{self.max_owner_bytes} bytes of pending chunks", "too_large")
            self._drop(victim, "evicted")
        while self._held + cost > self.max_bytes:
            victim = next((k for k in self._orphans if k != key), None)
            if victim is None:
                raise ChunkError(f"transfer {key[1][:12]}: would hold more than {self.max_bytes} bytes of pending "
                                 "chunks", "too_large")
            self._drop(victim, "evicted")

    def _drop(self, key: TransferKey, why: str) -> Dropped:
        transfer = self._remove(key)
        self.dropped[why] += 1
        dropped = Dropped(key[0], key[1], transfer.owner, transfer.manifest, len(transfer.chunks), why)
        if why == "evicted":
            log.debug("transfer %s of %s evicted to make room (%d chunks held)", key[1][:12], transfer.owner or "-",
                      len(transfer.chunks))
        if self._on_drop is not None:
            self._on_drop(dropped)
        return dropped

    def _remove(self, key: TransferKey) -> _Transfer:
        transfer = self._transfers.pop(key)
        self._orphans.pop(key, None)
        mine = self._by_owner[transfer.owner]
        del mine[key]
        if not mine:
            del self._by_owner[transfer.owner]
        self._held -= transfer.cost
        self._held_by_owner[transfer.owner] -= transfer.cost
        if not self._held_by_owner[transfer.owner]:
            del self._held_by_owner[transfer.owner]
        return transfer

    def _complete_if_done(self, key: TransferKey, transfer: _Transfer) -> bytes | None:
        manifest = transfer.manifest
        if manifest is None or len(transfer.chunks) < manifest.count:
            return None
        data = b"".join(transfer.chunks[i] for i in range(manifest.count))
        self._remove(key)
        if len(data) != manifest.size or sha256_hex(data) != manifest.sha256:  # chunk hashes matched: can't happen
            raise ChunkError(f"transfer {key[1][:12]}: reassembled bytes do not match the manifest's sha256")
        return data
