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

from recsys.shop import ShopState

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


# --------------------------------------------------------------------------- the oracle
#
# The ceiling: each user's unseen items ranked by the probability that they are among the
# user's held-out pairs, given the training pairs and the generator's state (persona,
# gender, every pool's affinity structure, the pick count). The model, from the generation
# rules (recsys.shop), with two approximations (marked below):
#
# * A user's picks are a Poisson process: users are drawn uniformly with replacement, so a
#   user gets Binomial(picks, 1/users) ~ Poisson(lam) picks, lam = picks / users, and a slot
#   of persona p gets Poisson(lam x weight[p, slot]), independently of the other slots.
# * Web slot (pool of n products, cliques): if the slot has picks, the first is a product s
#   drawn uniformly from the pool; the later picks land uniformly on s's clique row (size 4
#   or 5): m - 1 picks where m ~ Poisson(lam_slot) given m >= 1. A member other than s is
#   then present with probability rho = 1 - E[(1 - 1/size)^(m-1) | m >= 1] (exact); the
#   approximation is to take the members as present independently of each other (they
#   compete for the same picks) and of the slot's training items.
# * Store slot (a style of 1-3 items, uniform picks): by Poisson thinning every item is
#   present independently with rho = 1 - exp(-lam_slot / n); exact.
# * The random split holds out each pair with probability q (exactly round(q x pairs) in
#   all, independent of the item: Bernoulli(q) per pair is the approximation).
#
# A web slot's posterior over its first product s, given its training items T: s is
# consistent when T lies in s's row; its likelihood is (1 - q if s in T else q, since an
# unseen first product was held out) x (rho (1 - q)) per other member in T x (1 - rho +
# rho q) per other member not in T (absent, or present and held out). A slot with no
# training item also has the "no picks" hypothesis, exp(-lam_slot). Given s, an unseen
# item is held out with probability 1 when it is s and rho q / (1 - rho + rho q) when it is
# another member of s's row. The score is the posterior mean of that; items outside every
# consistent row, and outside the user's pools, score 0.


def _member_presence(lam: np.ndarray | float, size: np.ndarray) -> np.ndarray:
    """P(a given clique member other than the first product is picked), the slot having
    m ~ Poisson(lam) picks, m >= 1, the later m - 1 uniform over a row of `size`:
    1 - E[x^(m-1) | m >= 1] with x = 1 - 1/size, E[x^m] = exp(lam (x - 1))."""
    x = 1.0 - 1.0 / size
    lam = np.maximum(lam, 1e-12)
    return 1.0 - (np.exp(lam * (x - 1.0)) - np.exp(-lam)) / (x * -np.expm1(-lam))


def _slot_tables(state: ShopState, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per persona x slot: expected picks, and whether the slot is the first of its pool
    (a store persona may list one style twice: its picks are then one slot's)."""
    pools = state.pools
    lam = state.n_picks / n_users * pools.weights
    active = np.ones_like(lam, dtype=bool)
    for j in range(1, lam.shape[1]):
        for i in range(j):
            same = active[:, j] & (pools.base[:, i] == pools.base[:, j])
            lam[same, i] += lam[same, j]
            active[same, j] = False
    lam = np.where(active, lam, 0.0)
    return lam, active, pools.clique_size[pools.offset] > 0


def _empty_slot_scores(state: ShopState, pool: int, lam: float, q: float) -> np.ndarray:
    """Held-out probability of each product of `pool` for a slot with no training item."""
    pools = state.pools
    n = int(pools.length[pool])
    rows = pools.offset[pool] + np.arange(n)
    size = pools.clique_size[rows].astype(np.float64)
    if size[0] == 0:  # store style: independent items
        rho = 1.0 - np.exp(-lam / n)
        return np.full(n, rho * q / (1.0 - rho + rho * q))
    rho = _member_presence(lam, size)
    absent = 1.0 - rho + rho * q
    weight = (1.0 - np.exp(-lam)) / n * q * absent ** (size - 1)  # first product s, held out
    weight /= np.exp(-lam) + weight.sum()
    score = weight.copy()
    members = pools.clique[rows, 1:]
    other = members != np.arange(n)[:, None]
    share = np.broadcast_to((weight * rho * q / absent)[:, None], members.shape)
    score += np.bincount(members[other], weights=share[other], minlength=n)
    return score


def _containing(pools) -> np.ndarray:
    """For every pool position (global row), the rows whose clique holds it: its own row,
    then the CLIQUE_WINDOW rows whose window holds it (web pools; -1 for store pools)."""
    n_rows = pools.clique.shape[0]
    web = pools.clique_size > 0
    rows = np.flatnonzero(web)
    start = pools.offset[np.searchsorted(pools.offset, rows, side="right") - 1]
    width = pools.clique.shape[1] - 1
    member = (pools.clique[rows, 1:] + start[:, None]).ravel()
    owner = np.repeat(rows, width)
    order = np.argsort(member, kind="stable")
    if not np.array_equal(member[order], np.repeat(rows, width)):
        raise AssertionError("a window position is not in exactly CLIQUE_WINDOW windows")
    out = np.full((n_rows, 1 + width), -1, dtype=np.int64)
    out[rows, 0] = rows
    out[rows, 1:] = owner[order].reshape(-1, width)
    return out


def oracle_scores(
    state: ShopState, train: sp.csr_matrix, hold_out: float, slot_top: int | None = 100
) -> sp.csr_matrix:
    """Users x items: the probability that each item is one of the user's held-out pairs.

    `train` is the users x items training matrix of the shop `state` belongs to (rows and
    columns are the users and catalogue tables' rows); `hold_out` is the split's share of
    pairs held out. A slot with no training item contributes only its `slot_top` best
    products (all when None): enough for any top-k with k <= slot_top.
    """
    pools = state.pools
    n_users, n_items = train.shape
    if state.persona.size != n_users or pools.items.size and pools.items.max() >= n_items:
        raise ValueError("the training matrix does not belong to this shop's state")
    q = float(hold_out)
    lam_table, active, web_pool = _slot_tables(state, n_users)
    step = pools.gender_step[state.persona].astype(np.int64) * state.gender
    upool = pools.base[state.persona] + step[:, None]  # users x 3
    ulam = lam_table[state.persona]

    # training pairs -> the user's slot whose pool holds the item
    n_pools = pools.length.size
    pool_of_row = np.repeat(np.arange(n_pools), pools.length)
    local = np.arange(pools.items.size) - pools.offset[pool_of_row]
    position = np.full((n_pools, n_items), -1, dtype=np.int64)
    position[pool_of_row, pools.items] = local
    coo = sp.coo_matrix(train)
    pu, pi = coo.row.astype(np.int64), coo.col.astype(np.int64)
    pos3 = position[upool[pu], pi[:, None]]
    found = pos3 >= 0
    pslot = np.argmax(found & active[state.persona[pu]], axis=1)
    keep = found[np.arange(pu.size), pslot]  # pairs outside every pool of the user: none
    pu, pslot = pu[keep], pslot[keep]
    ppos = pos3[keep, pslot]
    nonempty = np.zeros((n_users, 3), dtype=bool)
    nonempty[pu, pslot] = True
    web_pair = web_pool[upool[pu, pslot]]
    pu, pslot, ppos = pu[web_pair], pslot[web_pair], ppos[web_pair]

    use = active[state.persona] & ~(nonempty & web_pool[upool])  # slots without a group
    parts = [_slot_entries(state, q, use, slot_top)]
    if pu.size:
        parts.append(_group_entries(state, q, upool, ulam, pu, pslot, ppos))
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    vals = np.concatenate([p[2] for p in parts])
    scores = sp.csr_matrix((vals, (rows, cols)), shape=(n_users, n_items))
    scores.sum_duplicates()
    return scores


def _slot_entries(
    state: ShopState, q: float, use: np.ndarray, slot_top: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, score) of the slots scored without training items: one score vector
    per (persona, gender, slot), computed once and repeated for its users."""
    pools = state.pools
    n_personas = pools.weights.shape[0]
    lam_table, _, _ = _slot_tables(state, state.persona.size)
    width = int(pools.length.max()) if slot_top is None else slot_top
    combo_items = np.full((n_personas * 2 * 3, width), -1, dtype=np.int64)
    combo_vals = np.zeros((n_personas * 2 * 3, width))
    for p in range(n_personas):  # 25 personas x 2 genders x 3 slots: not per user
        for g in range(2):
            for j in range(3):
                pool = int(pools.base[p, j] + pools.gender_step[p] * g)
                score = _empty_slot_scores(state, pool, float(lam_table[p, j]), q)
                best = np.argsort(-score, kind="stable")[:width]
                c = (p * 2 + g) * 3 + j
                combo_items[c, : best.size] = pools.items[pools.offset[pool] + best]
                combo_vals[c, : best.size] = score[best]
    users, slots = np.nonzero(use)
    combo = (state.persona[users].astype(np.int64) * 2 + state.gender[users]) * 3 + slots
    items, vals = combo_items[combo], combo_vals[combo]
    ok = items >= 0
    return np.broadcast_to(users[:, None], items.shape)[ok], items[ok], vals[ok]


def _group_entries(
    state: ShopState,
    q: float,
    upool: np.ndarray,
    ulam: np.ndarray,
    pu: np.ndarray,
    pslot: np.ndarray,
    ppos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, score) of the web slots with training items: the posterior over the
    slot's first product, vectorised over (user, slot) groups and their 5 candidate rows."""
    pools = state.pools
    key = pu * 3 + pslot
    groups, first, ginv = np.unique(key, return_index=True, return_inverse=True)
    gu, gs = groups // 3, groups % 3
    gpool = upool[gu, gs]
    lam = ulam[gu, gs]
    n_train = np.bincount(ginv, minlength=groups.size)
    base = pools.offset[gpool]
    cand = _containing(pools)[base + ppos[first]]  # G x 5 global rows holding the anchor
    dup = np.zeros_like(cand, dtype=bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :1]  # the own row again (anchor in its own window)
    row_pos = pools.clique[cand]  # G x 5 x 5 pool positions
    pair_rows = row_pos[ginv]
    in_row = (pair_rows == ppos[:, None, None]).any(axis=2)
    is_first = pair_rows[:, :, 0] == ppos[:, None]
    width = cand.shape[1]
    count = np.stack([np.bincount(ginv, in_row[:, k], groups.size) for k in range(width)], 1)
    first_in = np.stack([np.bincount(ginv, is_first[:, k], groups.size) for k in range(width)], 1)
    size = pools.clique_size[cand].astype(np.float64)
    rho = _member_presence(lam[:, None], size)
    absent = 1.0 - rho + rho * q
    members_seen = n_train[:, None] - first_in
    likelihood = (
        np.where(first_in > 0, 1.0 - q, q)
        * (rho * (1.0 - q)) ** members_seen
        * absent ** (size - 1 - members_seen)
    )
    weight = np.where((count == n_train[:, None]) & ~dup, likelihood, 0.0)
    total = weight.sum(axis=1, keepdims=True)
    post = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)

    s = row_pos[:, :, 0]
    members = row_pos[:, :, 1:]
    other = members != s[:, :, None]
    share = np.broadcast_to((post * rho * q / absent)[:, :, None], members.shape)
    users = np.broadcast_to(gu[:, None], s.shape)
    base2 = np.broadcast_to(base[:, None], s.shape)
    live = post > 0
    users_m = np.broadcast_to(gu[:, None, None], members.shape)
    base_m = np.broadcast_to(base[:, None, None], members.shape)
    live_m = other & live[:, :, None]
    return (
        np.concatenate([users[live], users_m[live_m]]),
        np.concatenate([pools.items[base2[live] + s[live]], pools.items[base_m + members][live_m]]),
        np.concatenate([post[live], share[live_m]]),
    )


def top_k_scored(
    scores: sp.csr_matrix, train: sp.csr_matrix, users: np.ndarray, k: int
) -> np.ndarray:
    """len(users) x k items by descending score (ties: lower item first), skipping the user's
    training items and items scored 0; -1 where a user has fewer than k."""
    rows = sp.csr_matrix(scores[users])
    seen = sp.csr_matrix(train[users], dtype=bool).astype(np.float64)
    rows = rows - rows.multiply(seen)
    rows.eliminate_zeros()
    coo = rows.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    r, c = coo.row[order], coo.col[order]
    start = np.searchsorted(r, np.arange(len(users)))
    rank = np.arange(r.size) - start[r]
    out = np.full((len(users), k), -1, dtype=np.int32)
    top = rank < k
    out[r[top], rank[top]] = c[top]
    return out
