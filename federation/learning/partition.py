"""Seeded, reproducible splits of a training set among federated clients.

Schemes: iid (random equal parts), dirichlet (per-class label skew) and shards (McMahan et al. 2017)."""

from __future__ import annotations

import logging
import math
import numbers
import re
from dataclasses import dataclass

import numpy as np

from federation.errors import FedmqError

LOG = logging.getLogger(__name__)

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
MAX_DIRICHLET_DRAWS = 100  # re-draws before the dirichlet scheme moves examples into empty parts

_PART = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")
_INDEX_RANGE = re.compile(r"\s*([0-9]+)(?:\s*:\s*|\s+)([0-9]+)\s*")


class PartitionError(FedmqError, ValueError):
    """A partition that cannot be made, or malformed part / index-range text; the message names the value."""


@dataclass(frozen=True)
class PartitionSpec:
    """Which part of the training set one client takes, and how the set is split."""

    index: int  # 0-based part this client takes
    num_parts: int
    scheme: str = "iid"
    seed: int = 0
    alpha: float = 0.5  # dirichlet concentration: small is skewed, large is close to iid
    shards_per_client: int = 2  # label shards per client, for the shards scheme

    def __post_init__(self) -> None:
        _check_options(self.num_parts, self.scheme, self.seed, self.alpha, self.shards_per_client)
        if not 0 <= self.index < self.num_parts:
            raise PartitionError(f"part index {self.index} is outside 0..{self.num_parts - 1}")


def parse_part(text: str) -> tuple[int, int]:
    """Parse the CLI's 1-based "i/n" into the 0-based (index, num_parts): "1/2" -> (0, 2)."""
    match = _PART.fullmatch(text)
    if match is None:
        raise PartitionError(f"bad part {text!r}: expected 'i/n' such as '1/2'")
    number, total = int(match[1]), int(match[2])
    if not 1 <= number <= total:
        raise PartitionError(f"bad part {text!r}: the part number must be between 1 and the number of parts")
    return number - 1, total


def parse_index_range(text: str, total: int) -> np.ndarray:
    """Parse "start:end" (or "start end") into arange(start, end), requiring 0 <= start < end <= total."""
    match = _INDEX_RANGE.fullmatch(text)
    if match is None:
        raise PartitionError(f"bad index range {text!r}: expected 'start:end' such as '0:5000'")
    start, end = int(match[1]), int(match[2])
    if not 0 <= start < end <= total:
        raise PartitionError(f"bad index range {text!r}: need 0 <= start < end <= {total}")
    return np.arange(start, end, dtype=np.int64)


def partition_indices(
    labels: np.ndarray,
    num_parts: int,
    scheme: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Split range(len(labels)) into num_parts disjoint, complete, sorted int64 index arrays.

    The same arguments always give the same parts; every part gets at least one example. Float labels are
    regression targets: they have no classes, so only the iid scheme splits them."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.ndim == 1:
        if scheme != "iid":
            raise PartitionError(
                f"the {scheme} scheme splits by class, but these labels are regression targets (floats); use "
                "--scheme iid or --index-range, or bin the targets into classes first")
        labels = np.zeros(len(labels), dtype=np.int64)  # iid needs only the count
    labels = _label_vector(labels)
    _check_options(num_parts, scheme, seed, alpha, shards_per_client)
    _check_enough_examples(len(labels), num_parts, scheme, shards_per_client)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid_parts(len(labels), num_parts, rng)
    elif scheme == "dirichlet":
        parts = _dirichlet_parts(labels, num_parts, alpha, rng)
    else:
        parts = _shard_parts(labels, num_parts, shards_per_client, rng)
    return [np.sort(part).astype(np.int64) for part in parts]


def client_indices(labels: np.ndarray, spec: PartitionSpec) -> np.ndarray:
    """The training-set indices of the part `spec` names."""
    parts = partition_indices(
        labels, spec.num_parts, spec.scheme, spec.seed, spec.alpha, spec.shards_per_client
    )
    return parts[spec.index]


def _label_vector(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise PartitionError(f"labels must be 1-D (or (N, 1)), got shape {labels.shape}")
    return labels


def _check_options(num_parts: int, scheme: str, seed: int, alpha: float, shards_per_client: int) -> None:
    if not _is_int(num_parts) or num_parts < 1:
        raise PartitionError(f"num_parts must be an integer >= 1, got {num_parts!r}")
    if scheme not in PARTITION_SCHEMES:
        raise PartitionError(f"unknown partition scheme {scheme!r}; known: {', '.join(PARTITION_SCHEMES)}")
    if not _is_int(seed) or seed < 0:
        raise PartitionError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
    if not _is_int(shards_per_client) or shards_per_client < 1:
        raise PartitionError(f"shards_per_client must be an integer >= 1, got {shards_per_client!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_enough_examples(count: int, num_parts: int, scheme: str, shards_per_client: int) -> None:
    if num_parts > count:
        raise PartitionError(f"cannot split {count} examples into num_parts={num_parts} non-empty parts")
    if scheme == "shards" and num_parts * shards_per_client > count:
        raise PartitionError(
            f"the shards scheme needs num_parts * shards_per_client = {num_parts} * {shards_per_client}"
            f" = {num_parts * shards_per_client} shards, more than the {count} examples"
        )


def _iid_parts(count: int, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into parts whose sizes differ by at most one."""
    return np.array_split(rng.permutation(count), num_parts)


def _dirichlet_parts(
    labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, shares ~ Dirichlet(alpha) over parts; re-drawn while some part is empty."""
    _, class_ids = np.unique(labels, return_inverse=True)
    members_by_class = [np.flatnonzero(class_ids == k) for k in range(class_ids.max() + 1)]
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts = _draw_dirichlet(members_by_class, num_parts, alpha, rng)
        if all(len(part) for part in parts):
            return parts
    LOG.warning(
        "dirichlet (alpha=%s) left a part empty in %d draws; moving examples into empty parts",
        alpha,
        MAX_DIRICHLET_DRAWS,
    )
    return _fill_empty_parts(parts)


def _draw_dirichlet(
    members_by_class: list[np.ndarray], num_parts: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    for members in members_by_class:
        shuffled = rng.permutation(members)
        shares = rng.dirichlet(np.full(num_parts, alpha))
        cuts = np.clip((np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64), 0, len(shuffled))
        for part_chunks, chunk in zip(chunks, np.split(shuffled, cuts)):
            part_chunks.append(chunk)
    return [np.concatenate(part_chunks) for part_chunks in chunks]


def _fill_empty_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Give each empty part one example taken from the currently largest part."""
    parts = list(parts)
    for index, part in enumerate(parts):
        if len(part) == 0:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[index], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def _shard_parts(
    labels: np.ndarray, num_parts: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label (ties in random order), cut into equal shards, deal shards_per_client to each part."""
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_parts * shards_per_client)
    order = rng.permutation(len(shards))
    return [
        np.concatenate([shards[s] for s in order[i * shards_per_client : (i + 1) * shards_per_client]])
        for i in range(num_parts)
    ]
