"""Cold-start fallback: one static list for users the model has never seen.

The naive list (items with the most distinct users) is a trap on catalogues that mix a few
tiny, heavily used categories with many large ones: in the reference shop 15 of its top 20
are convenience-store items, so nine in ten newcomers (web shoppers) are shown pizza and soda.

Here positions are apportioned by share of users (Sainte-Laguë, the method that keeps seat
shares closest to vote shares), first between audiences (groups of categories whose users
overlap: web shop vs store), then between the categories of an audience; each category
fills its seats with its items in order of distinct users. A newcomer sees the best items
of many categories, and store items get only the store's share of the list.

The trade-off is deliberate: on held-out pairs of cold users the naive list scores higher
overall, because the store's few users are served by 16 items, while web users (nine in
ten) almost never find anything in it; this list gives web users about three times the
hit rate. Score it per audience, not only in aggregate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def _binary(matrix: sp.spmatrix) -> sp.csr_matrix:
    """1 where a (user, item) pair has a non-zero entry, so counts mean distinct users."""
    m = sp.csr_matrix(matrix, copy=True)
    m.data = (m.data != 0).astype(np.float32)
    m.eliminate_zeros()
    return m


def item_users(train: sp.spmatrix) -> np.ndarray:
    """Distinct users per item (int64, one per column)."""
    return np.asarray(_binary(train).getnnz(axis=0), dtype=np.int64)


def most_popular(train: sp.spmatrix, size: int) -> np.ndarray:
    """The naive baseline: items by distinct users, ties by item index (int32)."""
    counts = item_users(train)
    order = np.lexsort((np.arange(counts.size), -counts))
    return order[: min(size, counts.size)].astype(np.int32)


def build_fallback(train: sp.spmatrix, item_categories: np.ndarray | None, size: int) -> np.ndarray:
    """Cold-start list of `min(size, items)` item column indices (int32), best first.

    Two nested Sainte-Laguë apportionments, each a priority `share / (2 * rank + 1)`:
    audiences (groups of categories whose users overlap, e.g. web shop vs convenience
    store) get positions by their share of users, and inside an audience each category by
    its share of users (a user counts once in every category touched). Within a category
    items rank by distinct users. Ties go to the lower item index, so the list is
    deterministic; everything is a few sorts, no loop over users or items. Without
    categories this is `most_popular`. Items nobody used come last.
    """
    if size <= 0:
        raise ValueError(f"fallback size must be >= 1, got {size}")
    n_items = train.shape[1]
    if item_categories is None:
        return most_popular(train, size)
    categories = np.asarray(item_categories)
    if categories.shape != (n_items,):
        raise ValueError(
            f"item_categories has shape {categories.shape}; expected ({n_items},), "
            "one category per item column"
        )
    binary = _binary(train)
    counts = np.asarray(binary.getnnz(axis=0), dtype=np.int64)
    index = np.arange(n_items)
    labels, cat = np.unique(categories, return_inverse=True)
    n_cats = labels.size

    onehot = sp.csr_matrix(
        (np.ones(n_items, dtype=np.float32), (index, cat)), shape=(n_items, n_cats)
    )
    user_cat = binary @ onehot
    user_cat.data[:] = 1.0
    cat_users = np.asarray(user_cat.getnnz(axis=0), dtype=np.float64)

    # Audiences: categories linked when >= 1% of the smaller one's users used both.
    co_users = (user_cat.T @ user_cat).toarray()
    smaller = np.minimum.outer(cat_users, cat_users)
    linked = sp.csr_matrix((co_users > 0) & (co_users >= _AUDIENCE_OVERLAP * smaller))
    _, audience = connected_components(linked, directed=False)
    audience_users = np.asarray(
        (user_cat @ sp.csr_matrix((np.ones(n_cats), (np.arange(n_cats), audience)))).getnnz(axis=0),
        dtype=np.float64,
    )

    used = counts > 0
    cat_rank = _rank_within(cat, -counts, index)
    cat_priority = np.where(used, _share(cat_users)[cat] / (2 * cat_rank + 1), 0.0)
    item_audience = audience[cat]
    aud_rank = _rank_within(item_audience, -cat_priority, -counts, index)
    priority = np.where(used, _share(audience_users)[item_audience] / (2 * aud_rank + 1), 0.0)
    order = np.lexsort((index, -counts, -cat_priority, -priority))
    return order[: min(size, n_items)].astype(np.int32)


_AUDIENCE_OVERLAP = 0.01


def _share(users: np.ndarray) -> np.ndarray:
    total = users.sum()
    return users / total if total > 0 else np.zeros_like(users)


def _rank_within(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each element inside its group, ordered by `keys` (first = primary)."""
    order = np.lexsort((*keys[::-1], group))
    sorted_group = group[order]
    starts = np.searchsorted(sorted_group, sorted_group)
    rank = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - starts
    return rank


def load_item_categories(path: Path | str, item_ids: np.ndarray) -> np.ndarray | None:
    """CATEGORY_L1 per item column from a catalogue CSV, for `build_fallback`.

    Shared by evaluate and export so the list that is scored is the list that ships. A
    catalogue without CATEGORY_L1 gives None (plain popularity); items it does not list
    share the category "" and a repeated ITEM_ID keeps its first row.
    """
    from stages.common import aligned, read_id_table

    frame = read_id_table(path, "ITEM_ID", ["CATEGORY_L1"])
    if "CATEGORY_L1" not in frame:
        return None
    return aligned(frame, "ITEM_ID", "CATEGORY_L1", item_ids)


def cold_users(train: sp.spmatrix, test: sp.spmatrix) -> np.ndarray:
    """Users (row indices, int64) with >= 1 held-out pair and <= 1 training item.

    They are the closest offline stand-in for a newcomer: the fallback is scored on them.
    """
    if train.shape != test.shape:
        raise ValueError(f"train {train.shape} and test {test.shape} shapes differ")
    train_items = _binary(train).getnnz(axis=1)
    test_items = _binary(test).getnnz(axis=1)
    return np.flatnonzero((test_items >= 1) & (train_items <= 1))


def score_fallback(
    items: np.ndarray, test: sp.spmatrix, users: np.ndarray, k: int
) -> dict[str, float]:
    """Ranking metrics at `k` of one static list for `users`, on their held-out pairs.

    Same definitions as the model's evaluation: AP divides by min(k, held-out items);
    NDCG uses binary gains. Users without held-out pairs are skipped.
    """
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    top = np.asarray(items, dtype=np.int64)[:k]
    held = _binary(test)[np.asarray(users, dtype=np.int64)]
    n_held = held.getnnz(axis=1)
    keep = n_held > 0
    held, n_held = held[keep], n_held[keep]
    if held.shape[0] == 0:
        return {name: 0.0 for name in _METRICS} | {"users": 0}
    rel = held[:, top].toarray() > 0  # (users, len(top)): at most k columns
    hits = rel.sum(axis=1)
    cum_hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, top.size + 1)
    ap = (rel * cum_hits / ranks).sum(axis=1) / np.minimum(k, n_held)
    discounts = 1.0 / np.log2(ranks + 1)
    dcg = (rel * discounts).sum(axis=1)
    ideal_len = np.minimum(n_held, top.size)
    idcg = np.cumsum(discounts)[np.maximum(ideal_len, 1) - 1]
    return {
        "map_at_k": float(ap.mean()),
        "precision_at_k": float((hits / k).mean()),
        "recall_at_k": float((hits / n_held).mean()),
        "ndcg_at_k": float((dcg / idcg).mean()),
        "hit_rate_at_k": float((hits > 0).mean()),
        "users": int(held.shape[0]),
    }


_METRICS = ("map_at_k", "precision_at_k", "recall_at_k", "ndcg_at_k", "hit_rate_at_k")
