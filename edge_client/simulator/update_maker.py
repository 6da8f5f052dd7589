"""The update a simulated device publishes: the round's global weights plus small seeded noise, as the training plan
asks (whole float32 weights, or encoded deltas with `base_sha256`), chunked when the plan or --chunk-bytes says so.

The same (device, round, model) always gives the same tensors, so a re-send is rebuilt instead of kept in memory."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from edge_client.simulator.schedule import noise_pool_rng, noise_rng
from federation.protocol.chunked_transfer import outgoing_messages
from federation.protocol.encodings import EncodingPlan, WireTensor, encode_dense, encode_topk, is_encodable
from federation.protocol.messages import GlobalModel, Update
from federation.protocol.topics import RunTopics


POOL_SLACK = 65_536    # distinct windows of a round's noise pool: devices sharing a window send equal noise


@functools.lru_cache(maxsize=2)
def _noise_pool(seed: int, round_: int, size: int) -> np.ndarray:
    """A round's seeded standard normal values, `size + POOL_SLACK` of them, made once per process: drawing a fresh
    0.9 MB of normals for each of a thousand devices cost the simulator 2 ms each, a real device's CPU, not ours."""
    return noise_pool_rng(seed, round_).standard_normal(size + POOL_SLACK, dtype=np.float32)


def noisy_deltas(weights: Sequence[np.ndarray], seed: int, index: int, round_: int,
                 scale: float) -> list[np.ndarray | None]:
    """Per tensor: Gaussian noise of std `scale` in the tensor's dtype, or None for a tensor that is not encodable
    (integers, empty: they travel as they are). Device `index`'s noise is a window of the round's pool at a seeded
    offset: the same (seed, device, round) always gives the same noise, and devices differ."""
    sizes = [w.size if is_encodable(w) else 0 for w in weights]
    pool = _noise_pool(seed, round_, sum(sizes))
    start = int(noise_rng(seed, index, round_).integers(0, POOL_SLACK + 1))
    out: list[np.ndarray | None] = []
    for w, n in zip(weights, sizes):
        if not n:
            out.append(None)
            continue
        noise = pool[start:start + n].reshape(w.shape) * np.float32(scale)
        out.append(noise.astype(w.dtype, copy=False))
        start += n
    return out


def update_tensors(weights: Sequence[np.ndarray], deltas: Sequence[np.ndarray | None],
                   plan: EncodingPlan) -> list[WireTensor]:
    """Whole weights (`global + delta`) for a float32 uplink; the deltas in the plan's encoding otherwise (no error
    feedback: PROTOCOL.md lets a device skip it)."""
    out: list[WireTensor] = []
    for w, d in zip(weights, deltas):
        if d is None:
            out.append(w)
        elif not plan.sends_deltas:
            out.append(w + d)
        elif plan.uplink == "topk":
            out.append(encode_topk(d, plan.topk_fraction, plan.topk_values, plan.int8_block))
        else:
            out.append(encode_dense(d, plan.uplink, plan.int8_block))
    return out


def update_messages(model: GlobalModel, topics: RunTopics, client_id: str, index: int, seed: int, noise: float,
                    examples: int, train_s: float, chunk_bytes: int | None) -> list[tuple[str, bytes]]:
    """(topic, payload) to publish for device `index`'s update of `model`'s round: one message, or chunks then
    their manifest (`chunk_bytes` None: the plan's train.chunk_bytes; else the smaller non-zero of both)."""
    weights = [w for _, w in model.tensors]
    deltas = noisy_deltas(weights, seed, index, model.round, noise)
    plan = model.train
    update = Update(run=model.run, round=model.round, sender=client_id, num_examples=examples,
                    metrics={"train_time_s": round(train_s, 4)},
                    tensors=list(zip([name for name, _ in model.tensors], update_tensors(weights, deltas,
                                                                                         plan.encoding))))
    if plan.encoding.sends_deltas:
        update.base_sha256 = model.weights_sha256
    chunk = min((c for c in (chunk_bytes or 0, plan.chunk_bytes) if c), default=0)
    return outgoing_messages(topics.update(client_id), update.encode(), chunk, model.run, model.round, client_id)
