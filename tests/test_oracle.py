"""The oracle of the synthetic shop (`recsys.fidelity.oracle_scores`): the generator's state
behind the tables, a calibrated posterior, and a ceiling no family passes."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
import scipy.sparse as sp

from recsys import shop as gen
from recsys.bootstrap import paired_difference
from recsys.commands import fidelity as cmd
from recsys.families.als import AlsParams, make_model, model_from_factors
from recsys.fidelity import log_from_frames, oracle_scores, top_k_scored
from recsys.ranking import popularity_ranking, top_k_excluding, top_k_unseen

SETTINGS = gen.ShopParams(
    seed=5, users=3000, interactions=25_000, days=30,
    end_date=dt.date(2024, 6, 30), store_user_share=0.1,
)  # fmt: skip
SMALL_ALS = AlsParams(
    factors=32, regularization=0.01, alpha=1.0, iterations=15, use_cg=True,
    random_state=42, track_loss=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def shop():
    """A small shop, its state, and the fidelity split of its pairs."""
    catalogue, users, events = gen.build_shop(SETTINGS)
    state = gen.shop_state(SETTINGS)
    log = log_from_frames(events, catalogue, users)
    train, test = cmd.split(log)
    return users, state, train, test


def unseen(scores: sp.csr_matrix, train: sp.csr_matrix) -> sp.csr_matrix:
    return scores - scores.multiply(sp.csr_matrix(train, dtype=bool).astype(np.float64))


def test_state_is_the_one_behind_the_tables(shop) -> None:
    users, state, train, test = shop
    assert np.array_equal(state.persona, users["PERSONA"].cat.codes.to_numpy())
    assert np.array_equal(state.gender, users["GENDER"].cat.codes.to_numpy())
    views, _ = gen.event_counts(SETTINGS.interactions)
    # every pair is at least one pick, every pick at least one View
    assert train.nnz + test.nnz <= state.n_picks <= views
    # another seed's shop has other cliques and other users
    other = gen.shop_state(dataclasses.replace(SETTINGS, seed=6))
    assert not np.array_equal(other.pools.clique, state.pools.clique)


def test_every_held_out_pair_is_possible_and_the_posterior_is_calibrated(shop) -> None:
    """The oracle's support holds every held-out pair (a wrong clique, pool or persona would
    leave some at 0), and its probabilities sum to about the pairs actually held out."""
    _, state, train, test = shop
    scores = unseen(oracle_scores(state, train, cmd.HOLD_OUT, slot_top=None), train)
    held = test.tocoo()
    assert (np.asarray(scores[held.row, held.col]).ravel() > 0).all()
    assert scores.data.min() >= 0 and scores.data.max() <= 1 + 1e-12
    expected = scores.sum()
    assert abs(expected - test.nnz) < 0.05 * test.nnz, (expected, test.nnz)


def test_oracle_is_at_least_as_good_as_every_family(shop) -> None:
    """On the same split and users: the oracle's MAP@20 beats ALS and most popular by a
    paired-bootstrap-significant margin; the wrong seed's state does not."""
    _, state, train, test = shop
    users = np.flatnonzero(np.diff(test.indptr))
    model = make_model(SMALL_ALS, 1)
    model.fit(train, show_progress=False)
    scorer = model_from_factors(model.user_factors, model.item_factors, 1)
    recs = {
        "als": top_k_unseen(scorer, train, users, cmd.K)[0],
        "popular": top_k_excluding(popularity_ranking(train), train[users], cmd.K),
        "oracle": top_k_scored(oracle_scores(state, train, cmd.HOLD_OUT), train, users, cmd.K),
    }
    value = {k: cmd.map_at_k(r, test, users) for k, r in recs.items()}
    ap = {k: cmd.per_user_metrics(r, test[users])["ap"] for k, r in recs.items()}
    assert np.isclose(ap["oracle"].mean(), value["oracle"])
    for family in ("als", "popular"):
        assert value["oracle"] >= value[family], value
        _, low, _ = paired_difference(ap["oracle"], ap[family], 1000, 0)
        assert low > 0, (family, value)
    wrong = gen.shop_state(dataclasses.replace(SETTINGS, seed=6))
    wrong_recs = top_k_scored(oracle_scores(wrong, train, cmd.HOLD_OUT), train, users, cmd.K)
    assert cmd.map_at_k(wrong_recs, test, users) < value["oracle"] / 2


def test_top_k_scored_skips_training_items_and_breaks_ties_by_item() -> None:
    scores = sp.csr_matrix(np.array([[0.5, 0.9, 0.5, 0.0], [0.0, 0.0, 0.0, 0.2]]))
    train = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    got = top_k_scored(scores, train, np.array([0, 1]), 3)
    assert got.tolist() == [[0, 2, -1], [3, -1, -1]]


def test_ceiling_table_names_the_best_family_and_its_share(capsys) -> None:
    rng = np.random.default_rng(0)
    oracle = rng.random(50)
    factors = [1, 0.4, 0.3, 0.5, 0.2, 0.1]  # in MODELS' order: the oracle first
    per_user = {"seed 1": {k: oracle * f for k, f in zip(cmd.MODELS, factors, strict=True)}}
    cmd.print_ceiling(per_user)
    out = capsys.readouterr().out
    assert "the best model (item-kNN BM25) reaches 50% of the ceiling" in out
    assert "| oracle (the ceiling) | " in out and "significant" in out
