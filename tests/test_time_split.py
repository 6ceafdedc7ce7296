"""Time-based split: each user's most recent pairs are held out, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.split import time_split


def pair_set(m: sp.csr_matrix) -> set[tuple[int, int]]:
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def tiny() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """user 0: 4 pairs; user 1: 1 pair; user 2: 3 pairs, two sharing the latest time."""
    rows = [0, 0, 0, 0, 1, 2, 2, 2]
    cols = [0, 1, 2, 3, 1, 0, 2, 3]
    conf = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    times = [400, 100, 300, 200, 50, 10, 30, 30]
    shape = (4, 5)  # user 3 has no pairs at all
    matrix = sp.csr_matrix((conf, (rows, cols)), shape=shape)
    last_seen = sp.csr_matrix((np.array(times, dtype=np.int64), (rows, cols)), shape=shape)
    return matrix, last_seen


def check_partition(matrix: sp.csr_matrix, train: sp.csr_matrix, test: sp.csr_matrix) -> None:
    assert train.shape == test.shape == matrix.shape
    assert train.dtype == test.dtype == matrix.dtype
    assert not pair_set(train) & pair_set(test)
    assert (train + test != matrix).nnz == 0


def test_fraction_holds_out_the_latest_pairs() -> None:
    matrix, last_seen = tiny()
    train, test = time_split(matrix, last_seen, fraction=0.5, last_n=None, min_history=2)
    check_partition(matrix, train, test)
    # user 0: 2 of 4, times 400 (item 0) and 300 (item 2); user 1 too short;
    # user 2: round(1.5) = 2 of 3: items 2 and 3 (tied at 30) beat item 0
    assert pair_set(test) == {(0, 0), (0, 2), (2, 2), (2, 3)}
    assert test[0, 0] == 1 and test[2, 3] == 8  # values travel with their pairs


def test_ties_broken_by_item_index() -> None:
    matrix, last_seen = tiny()
    _, test = time_split(matrix, last_seen, fraction=None, last_n=1, min_history=2)
    # user 2's items 2 and 3 share time 30: the higher index counts as more recent
    assert pair_set(test) == {(0, 0), (2, 3)}


def test_small_fraction_still_holds_out_one() -> None:
    matrix, last_seen = tiny()
    _, test = time_split(matrix, last_seen, fraction=0.01, last_n=None, min_history=2)
    assert pair_set(test) == {(0, 0), (2, 3)}


def test_every_user_keeps_a_training_pair() -> None:
    matrix, last_seen = tiny()
    train, test = time_split(matrix, last_seen, fraction=None, last_n=10, min_history=2)
    check_partition(matrix, train, test)
    assert pair_set(train) == {(0, 1), (1, 1), (2, 0)}  # each user's oldest pair


def test_min_history_excludes_short_users() -> None:
    matrix, last_seen = tiny()
    train, test = time_split(matrix, last_seen, fraction=None, last_n=1, min_history=4)
    assert pair_set(test) == {(0, 0)}
    check_partition(matrix, train, test)


def test_unsorted_input_indices_give_the_same_split() -> None:
    matrix, last_seen = tiny()
    expected = time_split(matrix, last_seen, fraction=0.5, last_n=None, min_history=2)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    backwards = np.lexsort((-matrix.indices, rows))  # columns descending within each row
    unsorted = [
        sp.csr_matrix((m.data[backwards], m.indices[backwards], m.indptr), shape=m.shape)
        for m in (matrix, last_seen)
    ]
    assert not unsorted[0].has_sorted_indices
    got = time_split(*unsorted, fraction=0.5, last_n=None, min_history=2)
    for a, b in zip(expected, got, strict=True):
        assert (a != b).nnz == 0


def reference_split(matrix, last_seen, fraction, last_n, min_history):
    """Straightforward per-user loop, the oracle for the vectorised version."""
    test = set()
    for u in range(matrix.shape[0]):
        lo, hi = matrix.indptr[u], matrix.indptr[u + 1]
        n = hi - lo
        if n < min_history:
            continue
        k = int(np.floor(fraction * n + 0.5)) if fraction is not None else last_n
        k = min(max(k, 1), n - 1)
        pairs = sorted(zip(last_seen.data[lo:hi], matrix.indices[lo:hi], strict=True))
        test |= {(u, int(col)) for _, col in pairs[n - k :]}
    return test


@pytest.mark.parametrize(("fraction", "last_n", "min_history"), [(0.2, None, 2), (None, 3, 5)])
def test_matches_a_per_user_reference(fraction, last_n, min_history) -> None:
    rng = np.random.default_rng(11)
    matrix = sp.random(300, 80, density=0.06, format="csr", random_state=rng, dtype=np.float32)
    matrix.data[:] = rng.integers(1, 9, matrix.nnz)
    last_seen = matrix.copy().astype(np.int64)
    last_seen.data[:] = rng.integers(0, 20, matrix.nnz)  # few distinct times: many ties
    train, test = time_split(
        matrix, last_seen, fraction=fraction, last_n=last_n, min_history=min_history
    )
    check_partition(matrix, train, test)
    assert pair_set(test) == reference_split(matrix, last_seen, fraction, last_n, min_history)
    assert test.nnz > 0 and train.nnz > test.nnz


def test_mismatched_last_seen_rejected() -> None:
    matrix, last_seen = tiny()
    other = last_seen.tolil()
    other[3, 4] = 99
    with pytest.raises(StageError, match="last_seen.npz"):
        time_split(matrix, other.tocsr(), fraction=0.5, last_n=None, min_history=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": 0.5, "last_n": 2, "min_history": 2},
        {"fraction": None, "last_n": None, "min_history": 2},
        {"fraction": 1.0, "last_n": None, "min_history": 2},
        {"fraction": None, "last_n": 0, "min_history": 2},
    ],
)
def test_bad_arguments(kwargs) -> None:
    matrix, last_seen = tiny()
    with pytest.raises(ValueError):
        time_split(matrix, last_seen, **kwargs)
