"""Ranking metrics on hand-made cases whose expected values are worked out in comments."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.metrics import category_share, coverage, evaluate_recs, hits_matrix, metrics_at_k
from recsys.ranking import popularity_ranking, top_k_excluding


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Users x items 0/1 matrix from each user's item list."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    data = np.ones(indices.size, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_items))


# User 0: held-out {2, 7}; recs [2, 5, 7] -> hits at ranks 1 and 3.
# User 1: held-out {4};    recs [1, 4, 3] -> hit at rank 2.
# User 2: held-out {0, 1, 6}; recs [3, 5, 8] -> no hit.
TEST = csr([[2, 7], [4], [0, 1, 6]], n_items=10)
RECS = np.array([[2, 5, 7], [1, 4, 3], [3, 5, 8]])


def test_hits_matrix_marks_held_out_items_only() -> None:
    expected = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(hits_matrix(RECS, TEST), expected)


def test_hits_ignore_empty_slots_and_other_users_items() -> None:
    # Item 4 is user 1's, not user 0's; -1 is an empty slot, never a hit.
    recs = np.array([[4, -1, 7], [-1, -1, 4], [6, 0, -1]])
    expected = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(hits_matrix(recs, TEST), expected)


def test_out_of_range_ids_are_empty_slots_not_the_next_users_items() -> None:
    # 10 + 4 = 14 would be (row 1, item 4) in a row-major key: user 0 must not get it.
    # 12 is past the catalogue too; -3 is just another empty slot.
    recs = np.array([[14, 12, 2], [-3, 4, 10], [16, 11, 1]])
    expected = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(hits_matrix(recs, TEST), expected)


def test_repeated_ids_in_a_row_are_rejected() -> None:
    # Counting item 2 twice would give user 0 precision@2 = 1 from one held-out item.
    with pytest.raises(ValueError, match="row 0 lists item 2 twice"):
        hits_matrix(np.array([[2, 2, 7], [1, 4, 3], [3, 5, 8]]), TEST)
    with pytest.raises(ValueError, match="row 2 lists item 5 twice"):
        hits_matrix(np.array([[2, 5, 7], [1, 4, 3], [5, 0, 5]]), TEST)
    # Repeated padding (-1 or out of range) is fine: those slots are empty.
    recs = np.array([[-1, -1, 2], [11, 11, 4], [-1, 20, 20]])
    assert hits_matrix(recs, TEST).sum() == 2


def test_map_at_k_by_hand() -> None:
    m = metrics_at_k(hits_matrix(RECS, TEST), np.diff(TEST.indptr))["map_at_k"]
    # k=1: u0 AP = (1/1)/min(1,2) = 1; u1 0; u2 0            -> 1/3
    # k=2: u0 (1/1)/min(2,2) = 0.5; u1 (1/2)/min(2,1) = 0.5; u2 0 -> 1/3
    # k=3: u0 (1/1 + 2/3)/2 = 5/6; u1 (1/2)/1 = 0.5; u2 0 (zero-hit user still counts)
    #      -> (5/6 + 1/2 + 0)/3 = 4/9
    np.testing.assert_allclose(m, [1 / 3, 1 / 3, 4 / 9])


def test_precision_recall_hit_rate_by_hand() -> None:
    m = metrics_at_k(hits_matrix(RECS, TEST), np.diff(TEST.indptr))
    # hits within top-k per user: k=1 (1,0,0); k=2 (1,1,0); k=3 (2,1,0)
    # precision = hits/k averaged: k=1 1/3; k=2 (1/2+1/2)/3 = 1/3; k=3 (2/3+1/3)/3 = 1/3
    np.testing.assert_allclose(m["precision_at_k"], [1 / 3, 1 / 3, 1 / 3])
    # recall = hits/|held-out|: k=1 (1/2)/3; k=2 (1/2+1)/3 = 1/2; k=3 (1+1+0)/3 = 2/3
    np.testing.assert_allclose(m["recall_at_k"], [1 / 6, 1 / 2, 2 / 3])
    # hit rate = users with >= 1 hit: k=1 1/3; k=2 2/3; k=3 2/3
    np.testing.assert_allclose(m["hit_rate_at_k"], [1 / 3, 2 / 3, 2 / 3])


def test_ndcg_by_hand() -> None:
    m = metrics_at_k(hits_matrix(RECS, TEST), np.diff(TEST.indptr))["ndcg_at_k"]
    d2, d3 = 1 / np.log2(3), 1 / np.log2(4)  # discounts of ranks 2 and 3 (rank 1: 1)
    # u0 (2 held-out): k=1 1/1; k=2 1/(1+d2); k=3 (1+d3)/(1+d2)
    # u1 (1 held-out): ideal DCG is 1 for every k: k=1 0; k=2 d2; k=3 d2
    # u2: 0
    expected = [
        (1 + 0 + 0) / 3,
        (1 / (1 + d2) + d2) / 3,
        ((1 + d3) / (1 + d2) + d2) / 3,
    ]
    np.testing.assert_allclose(m, expected)


def test_perfect_ranking_scores_one() -> None:
    # Each user's held-out items fill the top of the list: MAP, NDCG and hit rate are 1
    # at every k, since they only ask for min(k, |held-out|) hits.
    test = csr([[3], [0, 1]], n_items=5)
    recs = np.array([[3, 0], [1, 0]])
    m = metrics_at_k(hits_matrix(recs, test), np.diff(test.indptr))
    for name in ("map_at_k", "ndcg_at_k", "hit_rate_at_k"):
        np.testing.assert_allclose(m[name], [1.0, 1.0], err_msg=name)
    # recall@1: user 1 holds out 2 items, so 1/2 -> (1 + 1/2)/2 = 3/4; recall@2 = 1
    np.testing.assert_allclose(m["recall_at_k"], [0.75, 1.0])
    # precision@2: user 0 has one held-out item, so 1/2; user 1 2/2 -> 3/4
    np.testing.assert_allclose(m["precision_at_k"], [1.0, 0.75])


def test_all_zero_hit_users_score_zero() -> None:
    m = metrics_at_k(np.zeros((4, 5), dtype=bool), np.array([1, 2, 3, 4]))
    for name, values in m.items():
        np.testing.assert_array_equal(values, np.zeros(5), err_msg=name)


def test_users_without_held_out_items_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_relevant"):
        metrics_at_k(np.zeros((2, 3), dtype=bool), np.array([1, 0]))


def test_coverage_counts_distinct_items_and_skips_empty_slots() -> None:
    # distinct items {2, 5, 7, 1, 4, 3, 8} = 7 of 10
    assert coverage(RECS, 10) == pytest.approx(0.7)
    assert coverage(np.array([[1, -1], [1, -1]]), 4) == pytest.approx(0.25)


def test_evaluate_recs_combines_metrics_and_coverage() -> None:
    result = evaluate_recs(RECS, TEST)
    assert result["coverage"] == pytest.approx(0.7)
    assert result["map_at_k"][-1] == pytest.approx(4 / 9)


def test_popularity_counts_distinct_users_with_stable_ties() -> None:
    train = csr([[0, 2], [2, 3], [3], [1, 2]], n_items=5)
    # users per item: 0:1, 1:1, 2:3, 3:2, 4:0 -> 2, 3, then ties 0, 1 by index, then 4
    np.testing.assert_array_equal(popularity_ranking(train), [2, 3, 0, 1, 4])


def test_popularity_ignores_explicit_zeros_and_repeated_entries() -> None:
    # Item 4 has two stored zeros, item 1 one user entered twice (non-canonical CSR):
    # distinct users are 0:1, 1:1, 2:3, 3:2, 4:0, as above.
    indptr = np.array([0, 3, 6, 7, 10])
    indices = np.array([0, 2, 4, 2, 3, 4, 3, 1, 2, 1])
    data = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 1], dtype=np.float32)
    train = sp.csr_matrix((data, indices, indptr), shape=(4, 5))
    np.testing.assert_array_equal(popularity_ranking(train), [2, 3, 0, 1, 4])
    np.testing.assert_array_equal(popularity_ranking(train.tocoo()), [2, 3, 0, 1, 4])


def test_top_k_excluding_skips_each_users_training_items() -> None:
    ranking = np.array([5, 0, 3, 1, 4, 2])
    train = csr([[], [5], [0, 5, 1], [2, 4, 3]], n_items=6)
    got = top_k_excluding(ranking, train, 3)
    expected = [
        [5, 0, 3],  # nothing to skip
        [0, 3, 1],  # skips 5
        [3, 4, 2],  # skips 5, 0 and 1
        [5, 0, 1],  # skips 3 (training items 2 and 4 lie beyond the first free slots)
    ]
    np.testing.assert_array_equal(got, expected)


def test_top_k_excluding_pads_when_the_ranking_runs_out() -> None:
    # A 3-item list: the user holding one of them gets two items and an empty slot.
    ranking = np.array([4, 1, 2])
    train = csr([[1], [0]], n_items=5)
    np.testing.assert_array_equal(top_k_excluding(ranking, train, 3), [[4, 2, -1], [4, 1, 2]])


def test_top_k_excluding_matches_a_per_user_reference_on_random_data() -> None:
    rng = np.random.default_rng(3)
    train = sp.random(300, 40, density=0.2, format="csr", random_state=rng)
    ranking = rng.permutation(40)[:30]
    got = top_k_excluding(ranking, train, 12)
    for u in range(train.shape[0]):  # reference: the obvious per-user filter
        seen = set(train[u].indices.tolist())
        want = [i for i in ranking.tolist() if i not in seen][:12]
        want += [-1] * (12 - len(want))
        np.testing.assert_array_equal(got[u], want, err_msg=f"user {u}")


def test_category_share_counts_only_known_personas_and_filled_slots() -> None:
    recs = np.array([[0, 1, 2], [2, 3, -1], [0, 0, 0]])
    user_groups = np.array([0, 1, -1])  # user 2 has no persona: left out
    item_categories = np.array([0, 1, 1, 2])
    allowed = np.array([[True, False, False], [False, True, True]])
    # user 0 (group 0 allows cat 0): items 0,1,2 -> cats 0,1,1 -> 1 of 3
    # user 1 (group 1 allows cats 1,2): items 2,3 -> cats 1,2 -> 2 of 2 (empty slot left out)
    assert category_share(recs, user_groups, item_categories, allowed) == pytest.approx(3 / 5)


def test_blocks_of_users_give_the_single_pass_figures(monkeypatch) -> None:
    """Metrics, per-user values, coverage, persona share and the most-popular lists are
    computed in blocks of users at large scale: the same figures as one pass (exactly for
    counts and lists, to float rounding for means)."""
    from recsys import metrics, ranking
    from recsys.metrics import per_user_metrics

    rng = np.random.default_rng(11)
    n_users, n_items, k = 1000, 80, 10
    full = sp.random(n_users, n_items, density=0.08, format="csr", random_state=3, dtype=np.float32)
    held = sp.random(n_users, n_items, density=0.03, format="csr", random_state=4, dtype=np.float32)
    test = ((held - held.multiply(full > 0)) > 0).astype(np.float32).tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    train_rows, test_rows = full[users], test[users]
    groups = rng.integers(-1, 4, users.size)
    item_cat = rng.integers(-1, 5, n_items)
    allowed = rng.random((4, 5)) < 0.5

    def figures() -> tuple:
        recs = top_k_excluding(popularity_ranking(full), train_rows, k)
        return (
            recs,
            evaluate_recs(recs, test_rows),
            per_user_metrics(recs, test_rows),
            category_share(recs, groups, item_cat, allowed),
        )

    one = figures()
    monkeypatch.setattr(metrics, "BLOCK_USERS", 37)
    monkeypatch.setattr(ranking, "BLOCK_USERS", 37)
    blocked = figures()
    np.testing.assert_array_equal(blocked[0], one[0])
    for name in metrics.METRICS:
        np.testing.assert_allclose(blocked[1][name], one[1][name], rtol=1e-12)
    assert blocked[1]["coverage"] == one[1]["coverage"]
    for name in ("ap", "ndcg"):
        np.testing.assert_array_equal(blocked[2][name], one[2][name])
    assert blocked[3] == one[3]
