"""The cold-start fallback: store-like items must not crowd out everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from stages.common import StageError
from stages.fallback import (
    build_fallback,
    cold_users,
    load_item_categories,
    most_popular,
    score_fallback,
)

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
    naive = most_popular(train, 20)
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
    assert most_popular(train, 3).tolist() == [0, 1, 2]


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


def test_cold_users_have_held_out_pairs_and_at_most_one_training_item() -> None:
    train = sp.csr_matrix(
        np.array(
            [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
            dtype=np.float32,
        )
    )
    test = sp.csr_matrix(
        np.array(
            [[0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            dtype=np.float32,
        )
    )
    assert cold_users(train, test).tolist() == [1, 2]
    with pytest.raises(ValueError):
        cold_users(train, test[:, :3])


def test_score_fallback_on_a_hand_worked_case() -> None:
    # User 0 holds out item 0 (rank 2 of the list), user 1 holds out items 2 and 3
    # (item 2 at rank 1, item 3 absent).
    test = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    scores = score_fallback(np.array([2, 0, 1]), test, np.array([0, 1]), k=2)
    assert scores["users"] == 2
    assert scores["hit_rate_at_k"] == pytest.approx(1.0)
    assert scores["precision_at_k"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert scores["recall_at_k"] == pytest.approx((1 + 1 / 2) / 2)
    assert scores["map_at_k"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    ndcg_user0 = (1 / np.log2(3)) / 1.0
    ndcg_user1 = 1.0 / (1 + 1 / np.log2(3))
    assert scores["ndcg_at_k"] == pytest.approx((ndcg_user0 + ndcg_user1) / 2)


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
