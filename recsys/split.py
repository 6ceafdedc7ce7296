"""Train/test splits of the confidence matrix: a random share of pairs, or each user's latest.

`random` holds out `mask.fraction` of all pairs, seeded, as the article does. `time` holds
out each user's most recent pairs: a random split lets the model peek at a user's future to
predict their past, while the latest pairs measure what production sees. Both choose a
boolean mask over the stored pairs and cut the matrix with the one routine `split_pairs`,
so train + test == matrix and no pair is in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.params import Section
from recsys.paths import LAST_SEEN, MATRIX

STRATEGIES = ["random", "time"]


@dataclass(frozen=True)
class MaskParams:
    """`mask:` params (`seed` is used by `random`; `last_n`, `min_history` by `time`)."""

    strategy: str
    fraction: float
    seed: int
    last_n: int
    min_history: int

    @classmethod
    def from_section(cls, s: Section) -> MaskParams:
        return cls(
            strategy=s.choice("strategy", STRATEGIES, "random"),
            fraction=s.float("fraction", 0.2, min=0, max=1, min_exclusive=True, max_exclusive=True),
            seed=s.int("seed", 7, min=0),
            last_n=s.int("last_n", 0, min=0),
            min_history=s.int("min_history", 2, min=2),
        )


def split(
    matrix: sp.csr_matrix, last_seen: sp.csr_matrix | None, params: MaskParams
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(train, test) by `params.strategy`; `last_seen` is needed by the time split only."""
    if params.strategy == "random":
        return random_split(matrix, params.fraction, params.seed)
    train, test = time_split(
        matrix,
        last_seen,
        fraction=None if params.last_n else params.fraction,
        last_n=params.last_n or None,
        min_history=params.min_history,
    )
    if test.nnz == 0:
        users = int(np.count_nonzero(np.diff(matrix.indptr) >= params.min_history))
        raise StageError(
            f"params.yaml: mask.min_history = {params.min_history} leaves no user to hold "
            f"pairs out for ({users} users have that many pairs); expected a smaller "
            "mask.min_history"
        )
    return train, test


def split_pairs(matrix: sp.csr_matrix, held_out: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Cut a CSR matrix by a boolean mask over its stored entries (True = held out).

    Built directly in CSR form: both parts keep the matrix's shape and dtype.
    """
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = _entry_rows(matrix)
    return _pick(matrix, rows, ~held_out), _pick(matrix, rows, held_out)


def random_split(
    matrix: sp.csr_matrix, fraction: float, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out round(fraction * nnz) pairs chosen uniformly at random (seeded)."""
    n_test = int(round(fraction * matrix.nnz))
    if n_test == 0 or n_test == matrix.nnz:
        raise StageError(
            f"params.yaml: mask.fraction = {fraction} holds out {n_test} of {matrix.nnz} pairs; "
            "expected a split with pairs on both sides"
        )
    rng = np.random.default_rng(seed)
    held_out = np.zeros(matrix.nnz, dtype=bool)
    held_out[rng.choice(matrix.nnz, size=n_test, replace=False)] = True
    return split_pairs(matrix, held_out)


def time_split(
    matrix: sp.csr_matrix,
    last_seen: sp.csr_matrix,
    *,
    fraction: float | None,
    last_n: int | None,
    min_history: int,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split `matrix` into (train, test) by the pairs' last timestamps in `last_seen`.

    Every user with at least `min_history` pairs holds out either round(fraction * pairs)
    (half up, at least 1) or `last_n` of their most recent pairs, capped at pairs - 1.
    Equal timestamps are ordered by item index (the higher index counts as more recent), so
    the split is deterministic. Both results have the shape of `matrix`, no pair is in both,
    and train + test == matrix.
    """
    if (fraction is None) == (last_n is None):
        raise ValueError("give exactly one of fraction and last_n")
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if last_n is not None and last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1, got {min_history}")

    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.sort_indices()
    last_seen = sp.csr_matrix(last_seen, copy=True)
    last_seen.sort_indices()
    if (
        last_seen.shape != matrix.shape
        or not np.array_equal(last_seen.indptr, matrix.indptr)
        or not np.array_equal(last_seen.indices, matrix.indices)
    ):
        raise StageError(
            f"{LAST_SEEN}: its non-zero pairs differ from {MATRIX}; expected the "
            "same pairs (re-run the matrix stage: dvc repro matrix)"
        )

    n_rows = matrix.shape[0]
    counts = np.diff(matrix.indptr)
    rows = _entry_rows(matrix)
    # Rows stay contiguous in this order, so position p in it still belongs to rows[p].
    order = np.lexsort((matrix.indices, last_seen.data, rows))
    newer = matrix.indptr[rows + 1] - 1 - np.arange(matrix.nnz)  # pairs more recent than p

    if fraction is not None:
        held = np.floor(fraction * counts + 0.5).astype(np.int64)
    else:
        held = np.full(n_rows, last_n, dtype=np.int64)
    held = np.clip(held, 1, np.maximum(counts - 1, 0))
    held[counts < min_history] = 0

    is_test = np.empty(matrix.nnz, dtype=bool)
    is_test[order] = newer < held[rows]
    return split_pairs(matrix, is_test)


def _entry_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """The row of every stored entry, in storage order."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def _pick(matrix: sp.csr_matrix, rows: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """Sub-matrix of the stored entries where `keep` holds, built directly in CSR form."""
    indptr = np.zeros(matrix.shape[0] + 1, dtype=matrix.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=matrix.shape[0]), out=indptr[1:])
    return sp.csr_matrix(
        (matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape, dtype=matrix.dtype
    )
