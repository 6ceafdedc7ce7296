"""Top-k lists that skip what a user already has, for every user at once.

`top_k_unseen` ranks with a model's own scoring, `top_k_excluding` with one global ranking
(most popular, the fallback); both are vectorised over users, never a users x items matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.cli import progress
from recsys.metrics import BLOCK_USERS, hits_matrix

RECOMMEND_BATCH = 20_000


def popularity_ranking(train: sp.spmatrix) -> np.ndarray:
    """All items, most distinct training users first (ties: lower item index first).

    The most-popular baseline, and the cold-start fallback when there are no categories.
    Explicit zeros and repeated (user, item) entries do not add users.
    """
    train = sp.csr_matrix(train)
    if not train.has_canonical_format:
        train = train.copy()
        train.sum_duplicates()
    counts = np.bincount(train.indices[train.data != 0], minlength=train.shape[1])
    return np.argsort(-counts, kind="stable").astype(np.int32)


def top_k_excluding(ranking: np.ndarray, train_rows: sp.csr_matrix, k: int) -> np.ndarray:
    """First k items of a global `ranking` per user, skipping the user's training items.

    Users x k int32, -1 where the ranking runs out. Instead of masking a users x items
    matrix, it uses the positions of each user's training items in the ranking: if the
    user's i-th masked position (0-based, ascending) is s_i, then t_i = s_i - i free slots
    precede it, and the j-th free slot is j + #{i : t_i <= j}.
    """
    ranking = np.asarray(ranking, dtype=np.int64)
    if not train_rows.has_canonical_format:
        train_rows = train_rows.copy()
        train_rows.sum_duplicates()
    n_users, n_items = train_rows.shape
    if k < 1:
        raise ValueError("k must be >= 1")
    position = np.full(n_items, -1, dtype=np.int64)
    position[ranking] = np.arange(ranking.size)
    out = np.empty((n_users, k), dtype=np.int32)
    # blocks of users: the int64 temporaries (about 1 KB a user) stay bounded at 10M users
    for start in range(0, n_users, BLOCK_USERS):
        stop = min(start + BLOCK_USERS, n_users)
        out[start:stop] = _top_k_block(ranking, position, train_rows[start:stop], k)
    return out


def _top_k_block(
    ranking: np.ndarray, position: np.ndarray, train_rows: sp.csr_matrix, k: int
) -> np.ndarray:
    n_users = train_rows.shape[0]
    size = ranking.size

    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(train_rows.indptr))
    masked = position[train_rows.indices]
    keep = masked >= 0
    rows, masked = rows[keep], masked[keep]
    width = size + 1
    order = np.argsort(rows * width + masked, kind="stable")
    rows, masked = rows[order], masked[order]
    row_start = np.searchsorted(rows, np.arange(n_users + 1))
    rank_in_row = np.arange(rows.size) - row_start[rows]
    free_before = rows * width + (masked - rank_in_row)

    slots = np.arange(k, dtype=np.int64)
    query = np.arange(n_users, dtype=np.int64)[:, None] * width + slots[None, :]
    skipped = np.searchsorted(free_before, query, side="right") - row_start[:-1, None]
    chosen = slots[None, :] + skipped
    out = np.full((n_users, k), -1, dtype=np.int32)
    inside = chosen < size
    out[inside] = ranking[chosen[inside]]
    return out


def top_k_unseen(
    model: Any, train: sp.csr_matrix, users: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user from an implicit model, excluding the user's training items.

    Returns int32 item indices and float32 scores, users x k; slots a user cannot fill
    (fewer than k unseen items) hold -1 / NaN. Same lists as
    `model.recommend(..., filter_already_liked_items=True)`, which is what
    `implicit.evaluation` scores, but that filter slices the CSR once per user in Python
    (most of its run time). Instead each user gets the top k + (its training items, rounded
    up to a power of two) unfiltered from implicit's C top-k, and the training items are
    dropped in one vectorised pass. Users are grouped by that padding, so the loop runs over
    a handful of groups and batches, never over users.
    """
    from threadpoolctl import threadpool_limits

    users = np.asarray(users, dtype=np.int64)
    n_items = train.shape[1]
    lengths = np.diff(train.indptr)[users]
    pad = np.zeros(users.size, dtype=np.int64)
    seen = lengths > 0
    pad[seen] = 2 ** np.ceil(np.log2(lengths[seen])).astype(np.int64)
    ids = np.full((users.size, k), -1, dtype=np.int32)
    scores = np.full((users.size, k), np.nan, dtype=np.float32)
    # implicit's top-k runs its own threads; BLAS threads on top would oversubscribe
    batches = [
        (extra, group[start : start + RECOMMEND_BATCH])
        for extra in np.unique(pad).tolist()
        for group in [np.flatnonzero(pad == extra)]
        for start in range(0, group.size, RECOMMEND_BATCH)
    ]  # a handful of (padding, rows) batches, never one per user
    with threadpool_limits(1, "blas"):
        for extra, rows in progress(batches, len(batches), "top-k"):
            n = min(k + extra, n_items)
            batch = users[rows]
            cand, cand_scores = model.recommend(
                batch, train[batch], N=n, filter_already_liked_items=False
            )
            cand = np.asarray(cand).reshape(rows.size, n)
            cand_scores = np.asarray(cand_scores, dtype=np.float32).reshape(rows.size, n)
            masked = hits_matrix(cand, train[batch])  # True where already seen
            order = np.argsort(masked, axis=1, kind="stable")[:, :k]
            keep = ~np.take_along_axis(masked, order, axis=1)
            width = order.shape[1]
            ids[rows, :width] = np.where(keep, np.take_along_axis(cand, order, axis=1), -1)
            scores[rows, :width] = np.where(
                keep, np.take_along_axis(cand_scores, order, axis=1), np.nan
            )
    return ids, scores
