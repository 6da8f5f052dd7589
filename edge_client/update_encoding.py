"""The device's encode step for a compressed uplink: the update as deltas against the round's global model, in the
plan's encoding, with error feedback: what an encoding leaves out (top-k's unsent elements, rounding) is the
residual, added to the next round's delta and kept on disk (written atomically) so that it survives a restart."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from federation.errors import FedmqError
from federation.protocol.codec import DecodeError, DecodeLimits, pack, unpack
from federation.protocol.encodings import (
    Encoded, EncodingPlan, WireTensor, encode_dense, encode_topk, is_encodable,
)
from federation.protocol.encodings import decode_wire_tensors, wire_maps

log = logging.getLogger(__name__)

RESIDUAL_FILE = "residual.msgpack"
RESIDUAL_FORMAT = 1


class ResidualFileError(FedmqError, RuntimeError):
    """The residual file can't be written (the state folder is not writable)."""


@dataclass
class Residual:
    """The error feedback of one device: `after`, what the update for (`round`, `base_sha256`) left unsent, and
    `before`, the residual that update started from (used again if the same round must be trained again)."""

    run: str = ""
    round: int = 0
    base_sha256: str = ""
    before: dict[str, np.ndarray] = field(default_factory=dict)
    after: dict[str, np.ndarray] = field(default_factory=dict)

    def start_for(self, run: str, round_: int, base_sha256: str) -> dict[str, np.ndarray]:
        """The residual to add to this round's delta: the one the same (round, model) used before a restart, the
        one left after the last update otherwise; none for another run."""
        if run != self.run:
            return {}
        if round_ == self.round and base_sha256 == self.base_sha256:
            return self.before
        return self.after


class ResidualStore:
    """The residual in `<state_dir>/residual.msgpack` (msgpack, tensors as in PROTOCOL.md; no pickle), replaced
    atomically (temporary file, fsync, rename). `state_dir` None keeps it in memory only (tests)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / RESIDUAL_FILE if state_dir is not None else None
        self._memory = Residual()

    def load(self) -> Residual:
        if self.path is None or not self.path.is_file():
            return self._memory
        try:
            raw = unpack(self.path.read_bytes(), limits=DecodeLimits.for_size(self.path.stat().st_size))
            if raw.get("format") != RESIDUAL_FORMAT:
                raise DecodeError(f"format {raw.get('format')!r}, this software writes {RESIDUAL_FORMAT}")
            residual = Residual(str(raw["run"]), int(raw["round"]), str(raw["base_sha256"]),
                                _arrays(raw["before"]), _arrays(raw["after"]))
        except (DecodeError, KeyError, TypeError, ValueError, OSError) as exc:
            log.warning("ignoring the residual file %s (%s); starting from a zero residual", self.path, exc)
            return Residual()
        return residual

    def save(self, residual: Residual) -> None:
        self._memory = residual
        if self.path is None:
            return
        payload = pack({"format": RESIDUAL_FORMAT, "run": residual.run, "round": residual.round,
                        "base_sha256": residual.base_sha256, "before": wire_maps(sorted(residual.before.items())),
                        "after": wire_maps(sorted(residual.after.items()))})
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ResidualFileError(f"can't write the error-feedback residual to {self.path}: {exc}. Give a "
                                    "writable folder with --state-dir") from None


def _arrays(items: object) -> dict[str, np.ndarray]:
    return {name: np.array(t) for name, t in decode_wire_tensors(items, allow_topk=False)
            if isinstance(t, np.ndarray)}


class UpdateEncoder:
    """Turns trained weights into the tensors of an update in the plan's uplink encoding (deltas against the
    round's global weights, with error feedback), and keeps the residual in `store`."""

    def __init__(self, store: ResidualStore) -> None:
        self.store = store

    def encode(self, run: str, round_: int, base_sha256: str, names: Sequence[str],
               global_weights: Sequence[np.ndarray], trained: Sequence[np.ndarray],
               plan: EncodingPlan) -> list[tuple[str, WireTensor]]:
        residual = self.store.load()
        start = residual.start_for(run, round_, base_sha256)
        left: dict[str, np.ndarray] = {}
        out: list[tuple[str, WireTensor]] = []
        for name, g, w in zip(names, global_weights, trained):
            w = np.asarray(w)
            if not is_encodable(w):
                out.append((name, w))       # integers and empty tensors go raw, whole
                continue
            delta = w.astype(np.float32) - np.asarray(g, dtype=np.float32)
            carried = start.get(name)
            if carried is not None and carried.shape == delta.shape:
                delta = delta + carried
            encoded = self._encode(delta.astype(w.dtype, copy=False), plan)
            sent = encoded.value.dense(delta.dtype) if not isinstance(encoded.value, np.ndarray) else encoded.value
            left[name] = (delta - sent).astype(np.float32)
            out.append((name, encoded))
        self.store.save(Residual(run, round_, base_sha256, before=dict(start), after=left))
        return out

    @staticmethod
    def _encode(delta: np.ndarray, plan: EncodingPlan) -> Encoded:
        if plan.uplink == "topk":
            return encode_topk(delta, plan.topk_fraction, plan.topk_values, plan.int8_block)
        encoded = encode_dense(delta, plan.uplink, plan.int8_block)
        assert isinstance(encoded, Encoded), "a compressed uplink is float16, int8 or topk"
        return encoded
