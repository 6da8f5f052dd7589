"""Tests for federation.learning.partition: every scheme is disjoint, complete and reproducible.

Also the skew of the dirichlet scheme and the parsing of "i/n" parts and "start:end" ranges."""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.learning.partition import (
    PARTITION_SCHEMES,
    PartitionError,
    PartitionSpec,
    client_indices,
    parse_index_range,
    parse_part,
    partition_indices,
)


@dataclass(frozen=True)
class Case:
    labels: np.ndarray
    num_parts: int
    scheme: str
    seed: int
    alpha: float
    shards_per_client: int

    def split(self, seed: int | None = None) -> list[np.ndarray]:
        return partition_indices(
            self.labels,
            self.num_parts,
            self.scheme,
            self.seed if seed is None else seed,
            self.alpha,
            self.shards_per_client,
        )


@st.composite
def cases(draw: st.DrawFn, schemes: tuple[str, ...] = PARTITION_SCHEMES, min_size: int = 1) -> Case:
    labels = draw(hnp.arrays(np.int64, st.integers(min_size, 300), elements=st.integers(0, 9)))
    scheme = draw(st.sampled_from(schemes))
    shards_per_client = draw(st.integers(1, min(3, len(labels))))
    per_part = shards_per_client if scheme == "shards" else 1
    num_parts = draw(st.integers(1, min(20, len(labels) // per_part)))
    seed = draw(st.integers(0, 2**32 - 1))
    alpha = draw(st.floats(0.01, 100.0))
    return Case(labels, num_parts, scheme, seed, alpha, shards_per_client)


@settings(deadline=None)
@given(cases())
def test_parts_are_disjoint_complete_sorted_and_non_empty(case: Case) -> None:
    parts = case.split()
    assert len(parts) == case.num_parts
    for part in parts:
        assert part.dtype == np.int64
        assert len(part) > 0
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates within a part
    together = np.concatenate(parts)
    assert len(together) == len(case.labels)  # with completeness below: pairwise disjoint
    assert np.array_equal(np.sort(together), np.arange(len(case.labels)))


@settings(deadline=None)
@given(cases())
def test_same_inputs_give_same_parts(case: Case) -> None:
    first, second = case.split(), case.split()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@settings(deadline=None)
@given(cases(schemes=("iid",), min_size=40))
def test_iid_parts_differ_by_seed_and_are_balanced(case: Case) -> None:
    if case.num_parts < 2:
        return
    other_seed = (case.seed + 1) % 2**32
    first, second = case.split(), case.split(seed=other_seed)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    sizes = [len(part) for part in first]
    assert max(sizes) - min(sizes) <= 1


def test_client_indices_is_the_spec_part() -> None:
    labels = np.repeat(np.arange(10), 30)
    spec = PartitionSpec(index=2, num_parts=4, scheme="dirichlet", seed=7, alpha=0.3)
    parts = partition_indices(labels, 4, "dirichlet", seed=7, alpha=0.3)
    assert np.array_equal(client_indices(labels, spec), parts[2])


def test_labels_of_shape_n_by_1_are_accepted() -> None:
    labels = np.repeat(np.arange(5), 4)
    flat = partition_indices(labels, 3, "shards", seed=1)
    column = partition_indices(labels[:, np.newaxis], 3, "shards", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(flat, column, strict=True))


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label distribution and the whole set's."""
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == c) for c in classes])
    shares = [np.array([np.mean(labels[part] == c) for c in classes]) for part in parts]
    distances = [0.5 * np.abs(share - overall).sum() for share in shares]
    return float(np.mean(distances))


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha() -> None:
    labels = np.repeat(np.arange(10), 200)
    skewed = _label_skew(labels, partition_indices(labels, 10, "dirichlet", seed=0, alpha=0.05))
    near_iid = _label_skew(labels, partition_indices(labels, 10, "dirichlet", seed=0, alpha=100.0))
    assert skewed > 0.5
    assert near_iid < 0.1
    assert skewed > near_iid + 0.4


def test_dirichlet_fills_empty_parts_when_redraws_fail() -> None:
    labels = np.zeros(5, dtype=np.int64)  # one class: tiny alpha puts it all in one part every time
    parts = partition_indices(labels, 5, "dirichlet", seed=3, alpha=0.001)
    assert sorted(len(part) for part in parts) == [1, 1, 1, 1, 1]


def test_shards_give_each_client_at_most_its_shards_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    for part in partition_indices(labels, 5, "shards", seed=4, shards_per_client=2):
        assert len(np.unique(labels[part])) <= 2


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_parts": 0}, "num_parts"),
        ({"num_parts": 31}, "31"),
        ({"scheme": "random"}, "'random'"),
        ({"alpha": 0.0}, "0.0"),
        ({"alpha": -1.0}, "-1.0"),
        ({"alpha": float("nan")}, "nan"),
        ({"seed": -1}, "-1"),
        ({"scheme": "shards", "num_parts": 10, "shards_per_client": 4}, "40"),
        ({"shards_per_client": 0}, "shards_per_client"),
    ],
)
def test_bad_partition_arguments_are_named(kwargs: dict[str, object], named: str) -> None:
    arguments: dict[str, object] = {"num_parts": 3, **kwargs}
    with pytest.raises(PartitionError, match=named.replace("(", r"\(")):
        partition_indices(np.zeros(30, dtype=np.int64), **arguments)  # type: ignore[arg-type]


def test_two_dimensional_labels_are_refused() -> None:
    with pytest.raises(PartitionError, match=r"\(4, 2\)"):
        partition_indices(np.zeros((4, 2)), 2)


def test_spec_rejects_an_index_outside_its_parts() -> None:
    with pytest.raises(PartitionError, match="index 2"):
        PartitionSpec(index=2, num_parts=2)
    with pytest.raises(PartitionError, match="'nope'"):
        PartitionSpec(index=0, num_parts=2, scheme="nope")


@pytest.mark.parametrize(
    ("text", "expected"), [("1/2", (0, 2)), ("2/2", (1, 2)), (" 3 / 5 ", (2, 5)), ("1/1", (0, 1))]
)
def test_parse_part_reads_one_based_parts(text: str, expected: tuple[int, int]) -> None:
    assert parse_part(text) == expected


@pytest.mark.parametrize("text", ["3/2", "0/2", "a/b", "", "1/0", "-1/2", "1/2/3", "1"])
def test_parse_part_names_bad_text(text: str) -> None:
    with pytest.raises(PartitionError) as error:
        parse_part(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize(
    ("text", "start", "end"), [("0:5000", 0, 5000), ("10 20", 10, 20), (" 5 : 60000 ", 5, 60000)]
)
def test_parse_index_range_gives_the_range(text: str, start: int, end: int) -> None:
    assert np.array_equal(parse_index_range(text, 60000), np.arange(start, end))
    assert parse_index_range(text, 60000).dtype == np.int64


@pytest.mark.parametrize("text", ["5:5", "6:5", "0:60001", "a:b", "-1:5", "1", "1:2:3", ""])
def test_parse_index_range_names_bad_text(text: str) -> None:
    with pytest.raises(PartitionError) as error:
        parse_index_range(text, 60000)
    assert repr(text) in str(error.value)
