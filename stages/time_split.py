"""Time-based split: hold out each user's most recent (user, item) pairs.

A random split lets the model peek at a user's future to predict their past; holding out
the latest pairs instead measures what production sees (the next items a known user
touches). Users with a short history keep everything in training: holding out their only
pairs would leave nothing to learn them from, and every user keeps at least one training pair.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stages.common import StageError


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
            "data/last_seen.npz: its non-zero pairs differ from data/matrix.npz; expected the "
            "same pairs (re-run the matrix stage: dvc repro matrix)"
        )

    n_rows = matrix.shape[0]
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
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
    return _pick(matrix, rows, ~is_test), _pick(matrix, rows, is_test)


def _pick(matrix: sp.csr_matrix, rows: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """Sub-matrix of the stored entries where `keep` holds, built directly in CSR form."""
    indptr = np.zeros(matrix.shape[0] + 1, dtype=matrix.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=matrix.shape[0]), out=indptr[1:])
    return sp.csr_matrix(
        (matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape, dtype=matrix.dtype
    )
