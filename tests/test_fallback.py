"""The cold-start fallback: store-like items must not crowd out everything else."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.fallback import _overlap_graph, build_fallback, load_item_categories
from recsys.metrics import evaluate_recs
from recsys.ranking import popularity_ranking, top_k_excluding

WEB_CATEGORIES = 10
WEB_ITEMS_PER_CATEGORY = 30
STORE_CATEGORIES = 4
STORE_ITEMS_PER_CATEGORY = 2


def shop(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A miniature of the reference shop: many web users spread over 300 items in 10
    categories, and a few store users crowding onto 8 items in 4 categories (so every
    store item has far more distinct users than any web item)."""
    rng = np.random.default_rng(seed)
    n_web_items = WEB_CATEGORIES * WEB_ITEMS_PER_CATEGORY
    n_store_items = STORE_CATEGORIES * STORE_ITEMS_PER_CATEGORY
    categories = np.concatenate(
        [
            np.repeat([f"web{c}" for c in range(WEB_CATEGORIES)], WEB_ITEMS_PER_CATEGORY),
            np.repeat([f"store{c}" for c in range(STORE_CATEGORIES)], STORE_ITEMS_PER_CATEGORY),
        ]
    )
    n_web_users, n_store_users = 900, 100
    # Web users: 3 items each, from two categories.
    web_cats = rng.integers(0, WEB_CATEGORIES, (n_web_users, 2))
    picks = rng.integers(0, WEB_ITEMS_PER_CATEGORY, (n_web_users, 3))
    web_items = web_cats[:, [0, 0, 1]] * WEB_ITEMS_PER_CATEGORY + picks
    # Store users: 2 of the 8 store items each.
    store_items = n_web_items + rng.integers(0, n_store_items, (n_store_users, 2))
    rows = np.concatenate(
        [np.repeat(np.arange(n_web_users), 3), np.repeat(np.arange(n_store_users), 2) + 900]
    )
    cols = np.concatenate([web_items.ravel(), store_items.ravel()])
    matrix = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)),
        shape=(n_web_users + n_store_users, n_web_items + n_store_items),
    )
    matrix.sum_duplicates()
    is_store_item = np.arange(matrix.shape[1]) >= n_web_items
    return matrix, categories, is_store_item


def test_store_items_do_not_dominate_but_get_their_share() -> None:
    train, categories, is_store = shop()
    naive = popularity_ranking(train)[:20]
    # The construction reproduces the trap: the naive list opens with every store item.
    assert is_store[naive[:8]].all()

    fallback = build_fallback(train, categories, 20)
    store_share = 100 / 1000  # store users / all users
    n_store = int(is_store[fallback].sum())
    assert 1 <= n_store <= round(store_share * 20) + 1
    # A newcomer sees the best items of every web category.
    assert np.unique(categories[fallback[~is_store[fallback]]]).size == WEB_CATEGORIES
    # Inside a category, items come in order of distinct users.
    users = (train > 0).sum(axis=0).A1
    for cat in np.unique(categories[fallback]):
        in_cat = fallback[categories[fallback] == cat]
        assert (np.diff(users[in_cat]) <= 0).all()


def test_fallback_length_uniqueness_and_determinism() -> None:
    train, categories, _ = shop(seed=3)
    n_items = train.shape[1]
    first = build_fallback(train, categories, 50)
    assert first.dtype == np.int32
    assert first.shape == (50,)
    assert np.unique(first).size == 50
    assert np.array_equal(first, build_fallback(train.copy(), categories.copy(), 50))
    everything = build_fallback(train, categories, n_items + 10)
    assert sorted(everything.tolist()) == list(range(n_items))
    # A longer list extends a shorter one: the order does not depend on `size`.
    assert np.array_equal(everything[:50], first)


def test_ties_go_to_the_lower_item_index() -> None:
    # Every item has exactly one user, two categories with equal user shares.
    train = sp.identity(6, dtype=np.float32, format="csr")
    categories = np.array(["b", "b", "b", "a", "a", "a"])
    assert build_fallback(train, categories, 6).tolist() == [0, 3, 1, 4, 2, 5]
    assert popularity_ranking(train)[:3].tolist() == [0, 1, 2]


def test_unused_items_come_last_and_no_categories_means_popularity() -> None:
    train = sp.csr_matrix(np.array([[1, 0, 0, 2], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    categories = np.array(["x", "y", "y", "x"])
    assert set(build_fallback(train, categories, 4)[:2].tolist()) == {0, 3}
    assert build_fallback(train, None, 4).tolist() == [0, 3, 1, 2]


def test_bad_arguments_are_rejected() -> None:
    train, categories, _ = shop()
    with pytest.raises(ValueError, match="size"):
        build_fallback(train, categories, 0)
    with pytest.raises(ValueError, match="one category per item"):
        build_fallback(train, categories[:-1], 10)


def test_cold_web_users_find_far_more_in_the_fallback_than_in_the_naive_list() -> None:
    """Scored like evaluate scores it: cold users (<= 1 training item) on their held-out pairs,
    training item skipped, per audience. Regressing to plain popularity fails this."""
    warm, categories, is_store = shop(seed=0)
    newcomers, _, _ = shop(seed=1)
    # Each newcomer keeps their first item for training; the rest is held out.
    first = np.zeros(newcomers.nnz, dtype=np.float32)
    first[newcomers.indptr[:-1]] = 1.0
    seen = newcomers.multiply(sp.csr_matrix((first, newcomers.indices, newcomers.indptr)))
    held = (newcomers - seen).tocsr()
    held.eliminate_zeros()
    train = sp.vstack([warm, seen], format="csr")
    test = sp.vstack([sp.csr_matrix(warm.shape, dtype=np.float32), held], format="csr")
    cold = np.flatnonzero((np.diff(train.indptr) <= 1) & (np.diff(test.indptr) >= 1))
    assert cold.min() >= warm.shape[0]  # exactly the newcomers with held-out pairs

    k = 10
    fallback = top_k_excluding(build_fallback(train, categories, 20), train[cold], k)
    naive = top_k_excluding(popularity_ranking(train), train[cold], k)
    store_user = is_store[train[cold].indices]  # every newcomer has exactly one training item
    for audience in (~store_user, store_user):
        rows = test[cold[audience]]
        ours = evaluate_recs(fallback[audience], rows)
        theirs = evaluate_recs(naive[audience], rows)
        if audience is store_user:
            # The store keeps its share of the list, so its users still find something.
            assert 0 < ours["hit_rate_at_k"][-1] < theirs["hit_rate_at_k"][-1]
        else:
            assert ours["hit_rate_at_k"][-1] > 2 * theirs["hit_rate_at_k"][-1] > 0
            assert ours["map_at_k"][-1] > 2 * theirs["map_at_k"][-1]


def test_overlap_graph_matches_the_dense_definition() -> None:
    rng = np.random.default_rng(7)
    n_users, n_cats = 400, 60
    # A few users spread wide, most stay in one small block of categories.
    block = rng.integers(0, 6, n_users) * 10
    cats = np.where(
        rng.random((n_users, 4)) < 0.9,
        block[:, None] + rng.integers(0, 10, (n_users, 4)),
        rng.integers(0, n_cats, (n_users, 4)),
    )
    user_cat = sp.csr_matrix(
        (np.ones(cats.size, dtype=np.float32), (np.repeat(np.arange(n_users), 4), cats.ravel())),
        shape=(n_users, n_cats),
    )
    user_cat.sum_duplicates()
    user_cat.data[:] = 1.0
    cat_users = np.asarray(user_cat.getnnz(axis=0), dtype=np.float64)
    co = (user_cat.T @ user_cat).toarray()
    dense = (co > 0) & (co >= 0.01 * np.minimum.outer(cat_users, cat_users))
    graph = _overlap_graph(user_cat, cat_users)
    np.testing.assert_array_equal(graph.toarray() != 0, dense)
    assert 0 < dense.sum() < n_cats * n_cats  # some pairs linked, some not


def test_many_categories_stay_sparse() -> None:
    """A catalogue with thousands of tiny categories must not cost categories squared."""
    rng = np.random.default_rng(11)
    n_users, n_items = 3_000, 6_000
    rows = np.repeat(np.arange(n_users), 3)
    cols = rng.integers(0, n_items, rows.size)
    train = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
    )
    categories = np.array([f"c{i}" for i in range(n_items)])  # one category per item
    tracemalloc.start()
    try:
        fallback = build_fallback(train, categories, 50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.unique(fallback).size == 50
    # A dense 6,000 x 6,000 co-occurrence matrix alone would be 144 MB.
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_item_categories_follow_the_item_columns(tmp_path: Path) -> None:
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("ITEM_ID,PRICE,CATEGORY_L1\nb,1,shoes\na,2,books\nb,3,toys\n")
    found = load_item_categories(catalogue, np.array(["a", "b", "unlisted"]))
    assert found.tolist() == ["books", "shoes", ""]
    catalogue.write_text("ITEM_ID,PRICE\na,1\n")
    assert load_item_categories(catalogue, np.array(["a"])) is None
    catalogue.write_text("SKU,CATEGORY_L1\na,x\n")
    with pytest.raises(StageError, match="ITEM_ID"):
        load_item_categories(catalogue, np.array(["a"]))
