"""The update a simulated device publishes: the round's global weights plus small seeded noise, as the training plan
asks (whole float32 weights, or encoded deltas with `base_sha256`), chunked when the plan or --chunk-bytes says so.

The same (device, round, model) always gives the same tensors, so a re-send is rebuilt instead of kept in memory."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_client.simulator.schedule import noise_rng
from federation.protocol.chunked_transfer import outgoing_messages
from federation.protocol.encodings import EncodingPlan, WireTensor, encode_dense, encode_topk, is_encodable
from federation.protocol.messages import GlobalModel, Update
from federation.protocol.topics import RunTopics


def noisy_deltas(weights: Sequence[np.ndarray], rng: np.random.Generator, scale: float) -> list[np.ndarray | None]:
    """Per tensor: seeded Gaussian noise of std `scale` in the tensor's dtype, or None for a tensor that is not
    encodable (integers, empty: they travel as they are)."""
    out: list[np.ndarray | None] = []
    for w in weights:
        if not is_encodable(w):
            out.append(None)
            continue
        noise = rng.standard_normal(w.shape, dtype=np.float32)
        noise *= np.float32(scale)
        out.append(noise.astype(w.dtype, copy=False))
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
    deltas = noisy_deltas(weights, noise_rng(seed, index, model.round), noise)
    plan = model.train
    update = Update(run=model.run, round=model.round, sender=client_id, num_examples=examples,
                    metrics={"train_time_s": round(train_s, 4)},
                    tensors=list(zip([name for name, _ in model.tensors], update_tensors(weights, deltas,
                                                                                         plan.encoding))))
    if plan.encoding.sends_deltas:
        update.base_sha256 = model.weights_sha256
    chunk = min((c for c in (chunk_bytes or 0, plan.chunk_bytes) if c), default=0)
    return outgoing_messages(topics.update(client_id), update.encode(), chunk, model.run, model.round, client_id)
