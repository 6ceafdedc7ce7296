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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.ids import aligned, read_id_table
from recsys.params import Section
from recsys.ranking import popularity_ranking


@dataclass(frozen=True)
class ExportParams:
    """`export:` params: the length of each known user's list and of the fallback list.

    They live here, not with the bundle, because evaluate reads `fallback_size` too: it
    scores the fallback the bundle will serve, and an edit to the bundle must not re-run it.
    """

    top_n: int
    fallback_size: int

    @classmethod
    def from_section(cls, s: Section) -> ExportParams:
        return cls(top_n=s.int("top_n", min=1), fallback_size=s.int("fallback_size", min=1))

    def check_items(self, n_items: int, source: Path | str) -> None:
        """Refuse a top-N longer than the catalogue (`source` lists the items) before any work:
        it can never be filled, and its users x top_n arrays could exhaust memory."""
        if self.top_n > n_items:
            raise StageError(
                f"params.yaml: export.top_n = {self.top_n}; expected <= {n_items:,}, the "
                f"number of items in {source}"
            )


def binary_pairs(matrix: sp.spmatrix) -> sp.csr_matrix:
    """1 where a (user, item) pair has a non-zero entry, so counts mean distinct users."""
    m = sp.csr_matrix(matrix, copy=True)
    m.sum_duplicates()
    m.data = (m.data != 0).astype(np.float32)
    m.eliminate_zeros()
    return m


def build_fallback(train: sp.spmatrix, item_categories: np.ndarray | None, size: int) -> np.ndarray:
    """Cold-start list of `min(size, items)` item column indices (int32), best first.

    Two nested Sainte-Laguë apportionments, each a priority `share / (2 * rank + 1)`:
    audiences (groups of categories whose users overlap, e.g. web shop vs convenience
    store) get positions by their share of users, and inside an audience each category by
    its share of users (a user counts once in every category touched). Within a category
    items rank by distinct users. Ties go to the lower item index, so the list is
    deterministic; everything is a few sorts, no loop over users or items. Without
    categories this is `popularity_ranking`. Items nobody used come last.
    """
    if size <= 0:
        raise ValueError(f"fallback size must be >= 1, got {size}")
    n_items = train.shape[1]
    if item_categories is None:
        return popularity_ranking(train)[:size]
    categories = np.asarray(item_categories)
    if categories.shape != (n_items,):
        raise ValueError(
            f"item_categories has shape {categories.shape}; expected ({n_items},), "
            "one category per item column"
        )
    binary = binary_pairs(train)
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

    # Imported here: scipy.sparse.csgraph costs every process importing this module (the
    # evaluate and export stages, the service) about 0.17 CPU-s, and only this line needs it.
    from scipy.sparse.csgraph import connected_components

    _, audience = connected_components(_overlap_graph(user_cat, cat_users), directed=False)
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


def _overlap_graph(user_cat: sp.csr_matrix, cat_users: np.ndarray) -> sp.csr_matrix:
    """Categories linked when >= 1% of the smaller one's users used both.

    Sparse throughout: only category pairs that share a user are ever stored, so tens of
    thousands of categories cost their overlaps, not categories squared.
    """
    co = (user_cat.T @ user_cat).tocoo()
    keep = (co.data > 0) & (
        co.data >= _AUDIENCE_OVERLAP * np.minimum(cat_users[co.row], cat_users[co.col])
    )
    n_cats = cat_users.size
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (co.row[keep], co.col[keep])),
        shape=(n_cats, n_cats),
    )


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
    frame = read_id_table(path, "ITEM_ID", ["CATEGORY_L1"])
    if "CATEGORY_L1" not in frame:
        return None
    return aligned(frame, "ITEM_ID", "CATEGORY_L1", item_ids)
