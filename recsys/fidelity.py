"""How closely a shop's event log resembles the reference shop: the "Fidelity targets" figures.

The structural figures (co-occurrence spread, M/F clique overlap, style purity, funnel and
confidence shapes, popularity concentration) are computed here from integer-coded arrays;
`recsys fidelity` adds the learnability figures (held-out MAP@20 of ALS, item-kNN and
most popular) through the project's one scoring routine, `recsys.metrics.evaluate_recs`.
The tests of `generate` use the same functions at a smaller scale.

Definitions (all on the log as written, events sorted by time):

* pair: a distinct (user, item); its rows, its confidence (summed article event scores
  View 1 .. Purchase 5) and whether any of its rows is a funnel event (not a View).
* group: a user's distinct items within one category; two items of a group co-occur.
* co-occurring items per item: distinct partners over all groups, averaged over items with
  a partner; top-8 share: the share of an item's co-occurrences (user counts) held by its 8
  strongest partners, averaged over the same items.
* follow-ups per first item: for each group, the item of its first event is the first item
  and the group's other items are its follow-ups; distinct follow-ups per first item
  (genders pooled), averaged over first items with a follow-up; top-4 share likewise.
* M/F overlap: Jaccard overlap of the co-occurrence links (item pairs) among male users
  and among female users, pooled over categories without gendered products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

ARTICLE_SCORES = {"View": 1, "AddToCart": 2, "ViewCart": 3, "StartCheckout": 4, "Purchase": 5}


@dataclass(frozen=True)
class Log:
    """An event log as integer codes, with the item and user attributes the figures need.

    `user`, `item`: row indices into the users / items tables; `score`: the article's event
    score per row (View = 1); `item_category`, `item_style`: codes per item; `item_gendered`:
    the item has a gender affinity; `user_gender`: 0/1 per user (-1 unknown); `user_store`:
    the user shops at the convenience store.
    """

    user: np.ndarray
    item: np.ndarray
    score: np.ndarray
    item_category: np.ndarray
    item_style: np.ndarray
    item_gendered: np.ndarray
    user_gender: np.ndarray
    user_store: np.ndarray

    @property
    def n_users(self) -> int:
        return self.user_gender.size

    @property
    def n_items(self) -> int:
        return self.item_category.size


def _pairs(log: Log) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct (user, item) pair: user, item, rows, confidence, any funnel event."""
    key = log.user.astype(np.int64) * log.n_items + log.item
    uniq, inverse, rows = np.unique(key, return_inverse=True, return_counts=True)
    confidence = np.bincount(inverse, weights=log.score, minlength=uniq.size)
    funnel = np.bincount(inverse, weights=log.score > 1, minlength=uniq.size) > 0
    return uniq // log.n_items, uniq % log.n_items, rows, confidence, funnel


def _groups(log: Log) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Binary (user, category) groups x items, the first item of every group, group users."""
    category = log.item_category[log.item].astype(np.int64)
    n_cat = int(log.item_category.max()) + 1
    gkey = log.user.astype(np.int64) * n_cat + category
    groups, first_row, ginv = np.unique(gkey, return_index=True, return_inverse=True)
    g = sp.csr_matrix(
        (np.ones(ginv.size, dtype=np.float64), (ginv, log.item)), shape=(groups.size, log.n_items)
    )
    g.data[:] = 1.0  # duplicates were summed: back to binary
    return g, log.item[first_row], groups // n_cat


def _spread(counts: sp.csr_matrix, top: int) -> tuple[float, float]:
    """Mean distinct partners per row and mean share of a row's total held by its `top`."""
    counts = sp.csr_matrix(counts)
    counts.eliminate_zeros()
    degree = np.diff(counts.indptr)
    rows = np.flatnonzero(degree)
    if rows.size == 0:
        return 0.0, float("nan")
    width = int(degree.max())
    dense = np.zeros((rows.size, width))
    pos = np.arange(counts.nnz) - np.repeat(counts.indptr[:-1], degree)
    owner = np.repeat(np.arange(counts.shape[0]), degree)
    slot = np.searchsorted(rows, owner)
    dense[slot, pos] = counts.data
    dense = -np.sort(-dense, axis=1)
    share = dense[:, :top].sum(axis=1) / dense.sum(axis=1)
    return float(degree[rows].mean()), float(share.mean())


def cooccurrence(log: Log) -> dict[str, float]:
    """Co-occurring items per item (top-8 share), follow-ups per first item (top-4 share),
    M/F link overlap in categories without gendered items, single-style groups."""
    g, first, gusers = _groups(log)
    co = (g.T @ g).tocsr()
    co.setdiag(0)
    partners, top8 = _spread(co, 8)

    size = np.diff(g.indptr)
    follow = g.tocoo()
    keep = follow.col != first[follow.row]
    fu = sp.csr_matrix(
        (np.ones(keep.sum()), (first[follow.row[keep]], follow.col[keep])),
        shape=(log.n_items, log.n_items),
    )
    follow_ups, top4 = _spread(fu, 4)

    gendered_cat = np.zeros(int(log.item_category.max()) + 1, dtype=bool)
    gendered_cat[log.item_category[log.item_gendered]] = True
    plain_items = ~gendered_cat[log.item_category]
    links = []
    for gender in (0, 1):
        rows = np.flatnonzero(log.user_gender[gusers] == gender)
        sub = g[rows][:, plain_items]
        c = sp.triu(sub.T @ sub, k=1).tocoo()
        links.append(set((c.row.astype(np.int64) * log.n_items + c.col).tolist()))
    union = len(links[0] | links[1])
    overlap = len(links[0] & links[1]) / union if union else float("nan")

    style = log.item_style.astype(np.int64)
    multi = np.flatnonzero(size >= 2)
    coo = g[multi].tocoo()
    st = style[coo.col]
    lo = np.full(multi.size, np.iinfo(np.int64).max)
    hi = np.full(multi.size, -1)
    np.minimum.at(lo, coo.row, st)
    np.maximum.at(hi, coo.row, st)
    return {
        "cooccurring_items": partners,
        "cooccurring_top8_share": top8,
        "follow_ups": follow_ups,
        "follow_ups_top4_share": top4,
        "mf_link_overlap": overlap,
        "single_style_groups": float((lo == hi).mean()) if multi.size else float("nan"),
    }


def pair_shapes(log: Log) -> dict[str, float]:
    """Rows and confidence per pair, funnel coverage, store share, popularity, user depth."""
    user, item, rows, confidence, funnel = _pairs(log)
    per_user = np.bincount(user, minlength=log.n_users)
    active = per_user[per_user > 0]
    store_pairs = log.user_store[user]
    store_users = per_user[log.user_store & (per_user > 0)]
    users_per_item = np.sort(np.bincount(item, minlength=log.n_items))
    n = users_per_item.size
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ users_per_item / (n * users_per_item.sum()))
    top = max(1, int(round(0.01 * n)))
    return {
        "rows_per_pair": float(rows.mean()),
        "pairs_with_4_rows": float((rows == 4).mean()),
        "pairs_with_funnel": float(funnel.mean()),
        "confidence_1": float((confidence == 1).mean()),
        "confidence_3": float((confidence == 3).mean()),
        "confidence_4": float((confidence == 4).mean()),
        "confidence_max": float(confidence.max()),
        "store_items_per_user": float(store_users.mean()) if store_users.size else float("nan"),
        "store_pair_share": float(store_pairs.mean()),
        "users_per_item_gini": gini,
        "top1pct_item_pair_share": float(users_per_item[-top:].sum() / users_per_item.sum()),
        "items_per_user": float(active.mean()),
        "users_with_1": float((active == 1).mean()),
        "users_with_2": float((active == 2).mean()),
        "users_with_3_5": float(((active >= 3) & (active <= 5)).mean()),
        "users_with_over_5": float((active > 5).mean()),
    }


def log_from_frames(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> Log:
    """A `Log` from the three tables `generate` writes (read as strings or categoricals)."""
    item_ids = items["ITEM_ID"].astype(str).to_numpy()
    user_ids = users["USER_ID"].astype(str).to_numpy()
    item = pd.Index(item_ids).get_indexer(events["ITEM_ID"].astype(str))
    user = pd.Index(user_ids).get_indexer(events["USER_ID"].astype(str))
    if (item < 0).any() or (user < 0).any():
        raise ValueError("the event log names items or users missing from items/users")
    score = events["EVENT_TYPE"].astype(str).map(ARTICLE_SCORES).to_numpy(dtype=np.float64)
    category = pd.factorize(items["CATEGORY_L1"].astype(str))[0]
    style = pd.factorize(items["CATEGORY_L1"].astype(str) + ":" + items["CATEGORY_L2"].astype(str))[
        0
    ]
    gender = users["GENDER"].astype(str).map({"M": 0, "F": 1}).fillna(-1).to_numpy(np.int64)
    return Log(
        user=user,
        item=item,
        score=score,
        item_category=category,
        item_style=style,
        item_gendered=items["GENDER"].isin(["M", "F"]).to_numpy(),
        user_gender=gender,
        user_store=(users["SEGMENT"].astype(str) == "store").to_numpy(),
    )
