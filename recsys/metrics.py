"""Offline ranking metrics on held-out pairs, vectorised over users.

Every function takes top-K recommendations as an int array (users x K, best first, -1 for
"no recommendation") and the held-out CSR rows of the same users. Hits are found with one
`searchsorted` on (row, item) keys, then every metric for every k = 1..K follows from
cumulative sums over the K columns, so the cost is O(users x K) with no per-user Python.

Definitions: AP@k divides by min(k, |held-out|) and a user with no hit scores 0; NDCG@k has
binary gains and an ideal DCG over min(k, |held-out|) positions (both as in
`implicit.evaluation.ranking_metrics_at_k`); precision@k = hits/k, the standard definition
(Spark, Microsoft's recommenders), which is NOT implicit's "precision": that one divides by
min(k, |held-out|), so it reads higher for users with fewer than k held-out items;
recall@k = hits/|held-out|; hit rate@k = share of users with at least one hit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("map_at_k", "precision_at_k", "recall_at_k", "ndcg_at_k", "hit_rate_at_k")
# Users per block: the users x K temporaries (about 1.5 KB a user) stay near 200 MB however
# many users are scored. One block at the default scale (39k users), so its figures are
# those of a single pass.
BLOCK_USERS = 1 << 17


def _blocks(n_users: int) -> list[slice]:
    return [slice(s, min(s + BLOCK_USERS, n_users)) for s in range(0, n_users, BLOCK_USERS)]


def _row_keys(matrix: sp.csr_matrix, width: int) -> np.ndarray:
    """Sorted int64 keys row * width + column for every stored entry of a CSR matrix."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keys = rows * width + matrix.indices.astype(np.int64)
    # Already sorted when the CSR indices are sorted; sorting again is cheap insurance.
    keys.sort()
    return keys


def hits_matrix(recs: np.ndarray, test_rows: sp.csr_matrix) -> np.ndarray:
    """Boolean users x K: True where recs[u, r] is one of user u's held-out items.

    Ids outside 0..items-1 are empty slots like -1 (never a hit: unchecked, an id >= items
    would land in the next user's key range). A repeated id within a row raises ValueError,
    since it would count one held-out item twice.
    """
    recs = np.asarray(recs)
    n_users, n_items = test_rows.shape
    if recs.ndim != 2 or recs.shape[0] != n_users:
        raise ValueError(f"recs must be ({n_users}, K); got {recs.shape}")
    valid = (recs >= 0) & (recs < n_items)
    items = np.where(valid, recs, -1).astype(np.int64)
    ordered = np.sort(items, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        user, slot = np.argwhere(repeated)[0]
        raise ValueError(
            f"recs row {user} lists item {ordered[user, slot + 1]} twice; expected distinct ids"
        )
    keys = _row_keys(test_rows, n_items)
    if keys.size == 0 or recs.size == 0:
        return np.zeros(recs.shape, dtype=bool)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + items
    pos = np.searchsorted(keys, query)
    pos[pos == keys.size] = 0
    return valid & (keys[pos] == query)


def _checked(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.shape[0] == 0:
        raise ValueError("no users to evaluate")
    if n_rel.shape != (hits.shape[0],) or (n_rel < 1).any():
        raise ValueError("n_relevant must be >= 1 for every user")
    return hits, n_rel


def _per_user_at_k(hits: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric per user and k (users x K float64 arrays)."""
    top_k = hits.shape[1]
    ranks = np.arange(1, top_k + 1, dtype=np.float64)
    h = hits.astype(np.float64)
    cum_hits = np.cumsum(h, axis=1)
    # min(k, |held-out|) per user and k: the most hits a perfect top-k could hold.
    ideal_hits = np.minimum(ranks[None, :], n_rel[:, None])

    ap = np.cumsum(h * cum_hits / ranks, axis=1) / ideal_hits
    discounts = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(h * discounts, axis=1)
    ideal_dcg = np.cumsum(discounts)[ideal_hits.astype(np.int64) - 1]
    return {
        "map_at_k": ap,
        "precision_at_k": cum_hits / ranks,
        "recall_at_k": cum_hits / n_rel[:, None],
        "ndcg_at_k": dcg / ideal_dcg,
        "hit_rate_at_k": (cum_hits > 0).astype(np.float64),
    }


def metrics_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each metric over users, for every k = 1..K (arrays of length K).

    `n_relevant` is each user's number of held-out items; users must have at least one.
    """
    hits, n_rel = _checked(hits, n_relevant)
    if hits.shape[0] <= BLOCK_USERS:
        return {name: v.mean(axis=0) for name, v in _per_user_at_k(hits, n_rel).items()}
    totals: dict[str, np.ndarray] = {}
    for block in _blocks(hits.shape[0]):
        for name, values in _per_user_at_k(hits[block], n_rel[block]).items():
            totals[name] = totals.get(name, 0) + values.sum(axis=0)
    return {name: total / hits.shape[0] for name, total in totals.items()}


def per_user_metrics(recs: np.ndarray, test_rows: sp.csr_matrix) -> dict[str, np.ndarray]:
    """AP@K and NDCG@K of each user (float64, one per row), whose means are `map_at_k` and
    `ndcg_at_k`: what the bootstrap resamples and what two runs are compared on."""
    parts = []
    for block in _blocks(recs.shape[0]):
        rows = test_rows[block]
        hits, n_rel = _checked(hits_matrix(recs[block], rows), np.diff(rows.indptr))
        per_user = _per_user_at_k(hits, n_rel)
        parts.append((per_user["map_at_k"][:, -1], per_user["ndcg_at_k"][:, -1]))
    if not parts:
        raise ValueError("no users to evaluate")
    return {
        "ap": np.concatenate([p[0] for p in parts]),
        "ndcg": np.concatenate([p[1] for p in parts]),
    }


def coverage(recs: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's recommendations."""
    recs = np.asarray(recs)
    if not n_items:
        return 0.0
    seen = np.zeros(n_items, dtype=bool)
    for block in _blocks(recs.shape[0]):
        part = recs[block]
        seen[part[(part >= 0) & (part < n_items)]] = True
    return float(seen.sum() / n_items)


def evaluate_recs(recs: np.ndarray, test_rows: sp.csr_matrix) -> dict[str, np.ndarray | float]:
    """All metrics for every k plus coverage, from recommendations and held-out rows."""
    recs = np.asarray(recs)
    n_rel = np.diff(test_rows.indptr)
    if recs.shape[0] <= BLOCK_USERS:
        hits = hits_matrix(recs, test_rows)
    else:  # the hit test's int64 temporaries block by block; the hits are one bit each
        hits = np.concatenate([hits_matrix(recs[b], test_rows[b]) for b in _blocks(recs.shape[0])])
    result: dict[str, np.ndarray | float] = dict(metrics_at_k(hits, n_rel))
    result["coverage"] = coverage(recs, test_rows.shape[1])
    return result


def category_share(
    recs: np.ndarray, user_groups: np.ndarray, item_categories: np.ndarray, allowed: np.ndarray
) -> float:
    """Share of recommendations whose item category is allowed for the user's group.

    `user_groups` (users,) and `item_categories` (items,) are integer codes, -1 for unknown;
    `allowed` is a small boolean groups x categories table. Users with an unknown group
    and empty (-1) slots are left out of the share.
    """
    recs = np.asarray(recs)
    hits = total = 0
    for block in _blocks(recs.shape[0]):  # integer counts: blocks change nothing
        known = user_groups[block] >= 0
        part = recs[block][known]
        groups = np.broadcast_to(user_groups[block][known][:, None], part.shape)
        slot = part >= 0
        cats = item_categories[part[slot]]
        grp = groups[slot]
        total += cats.size
        ok = cats >= 0
        hits += int(allowed[grp[ok], cats[ok]].sum())
    if total == 0:
        return float("nan")
    return float(hits / total)
