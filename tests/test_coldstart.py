"""The cold-start model: popularity among users like the newcomer, backing off to broader
groups, computed from the training matrix only; and how evaluate scores it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.coldstart import ColdStart, ColdStartParams, build_coldstart, factorize
from recsys.errors import StageError
from recsys.evaluation import EvaluateParams, evaluate_model
from recsys.fallback import build_fallback
from recsys.families.popular import PopularModel, PopularParams
from recsys.ranking import popularity_ranking
from tests.helpers import parse

N_ITEMS = 12


def shop(seed: int = 0) -> tuple[sp.csr_matrix, dict[str, np.ndarray]]:
    """Two segments with disjoint favourite items, and inside "web" two personas with their
    own favourites; one persona ("rare") has only three users, below any useful support."""
    rng = np.random.default_rng(seed)
    segment = np.array(["web"] * 60 + ["store"] * 40)
    persona = np.array(["books"] * 30 + ["tools"] * 27 + ["rare"] * 3 + ["snacks"] * 40)
    favourite = {"books": [0, 1, 2], "tools": [3, 4, 5], "rare": [6, 7], "snacks": [8, 9, 10]}
    rows, cols = [], []
    for user, p in enumerate(persona.tolist()):  # test data: 100 users
        items = rng.choice(favourite[p], size=2, replace=False)
        rows += [user] * items.size
        cols += items.tolist()
    train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(100, N_ITEMS))
    return train, {"SEGMENT": segment, "PERSONA": persona}


PARAMS = ColdStartParams("attributes", ("SEGMENT", "PERSONA"), smoothing=5.0, min_support=5)


def test_groups_rank_their_own_favourites_and_small_groups_back_off() -> None:
    train, attrs = shop()
    model = build_coldstart(train, attrs, PARAMS, 6)
    assert model.columns == ("SEGMENT", "PERSONA")
    assert model.lists[0].tolist() == popularity_ranking(train)[:6].tolist()  # the root
    web_books = model.group_of({"SEGMENT": "web", "PERSONA": "books"})
    assert model.describe(web_books) == {"SEGMENT": "web", "PERSONA": "books"}
    assert set(model.lists[web_books, :3].tolist()) == {0, 1, 2}
    store = model.group_of({"SEGMENT": "store", "PERSONA": "snacks"})
    assert set(model.lists[store, :3].tolist()) == {8, 9, 10}
    # "rare" has 3 users < min_support: its users get the web list, as does an unseen value
    web = model.group_of({"SEGMENT": "web"})
    assert model.describe(web) == {"SEGMENT": "web"}
    assert model.group_of({"SEGMENT": "web", "PERSONA": "rare"}) == web
    assert model.group_of({"SEGMENT": "web", "PERSONA": "never-seen"}) == web
    # an unknown broad value stops the descent: the root, even with a known persona
    assert model.group_of({"SEGMENT": " ", "PERSONA": "books"}) == 0
    assert model.group_of({}) == 0
    assert set(model.lists[web, :6].tolist()) == {0, 1, 2, 3, 4, 5}


def test_smoothing_blends_a_group_with_its_parent() -> None:
    train, attrs = shop()
    alone = build_coldstart(train, attrs, ColdStartParams("attributes", ("SEGMENT",), 0.0, 1), 12)
    heavy = build_coldstart(train, attrs, ColdStartParams("attributes", ("SEGMENT",), 1e9, 1), 12)
    web = alone.group_of({"SEGMENT": "web"})
    # no smoothing: store items (nobody on the web used them) rank after every web item
    assert not set(alone.lists[web, :6].tolist()) & {8, 9, 10}
    # overwhelming smoothing: the group's list is the root's (overall popularity)
    assert heavy.lists[web].tolist() == heavy.lists[0].tolist()


def test_vectorised_lookup_matches_one_by_one_and_output_is_deterministic() -> None:
    train, attrs = shop()
    model = build_coldstart(train, attrs, PARAMS, 6)
    again = build_coldstart(train.copy(), {k: v.copy() for k, v in attrs.items()}, PARAMS, 6)
    for key, arr in model.arrays().items():
        assert np.array_equal(arr, again.arrays()[key]), key
    queries = {
        "SEGMENT": np.array(["web", "store", "", " web ", "web", "mars"], dtype=object),
        "PERSONA": np.array(["books", "snacks", "books", "tools", "rare", "books"], dtype=object),
    }
    groups = model.groups_of(queries, 6)
    one_by_one = [model.group_of({c: str(v[i]) for c, v in queries.items()}) for i in range(6)]
    assert groups.tolist() == one_by_one
    assert groups[2] == 0 and groups[5] == 0  # unknown or unseen segment: the root
    rebuilt = ColdStart.from_arrays(model.arrays(), N_ITEMS)
    assert rebuilt.groups_of(queries, 6).tolist() == one_by_one


def test_static_strategies_are_the_popular_and_apportioned_lists() -> None:
    train, attrs = shop()
    cats = np.array(["a", "a", "a", "b", "b", "b", "c", "c", "d", "d", "d", "d"])
    popular = build_coldstart(train, attrs, ColdStartParams("popular"), 5, cats)
    apportioned = build_coldstart(train, attrs, ColdStartParams("apportioned"), 5, cats)
    assert popular.lists.tolist() == [popularity_ranking(train)[:5].tolist()]
    assert apportioned.lists.tolist() == [build_fallback(train, cats, 5).tolist()]
    assert popular.group_of({"SEGMENT": "web"}) == 0
    # a users file without the columns: the attribute model is the popular list
    bare = build_coldstart(train, {}, PARAMS, 5)
    assert bare.lists.tolist() == popular.lists.tolist() and bare.columns == ()


def test_factorize_cleans_values_once() -> None:
    codes, labels = factorize(np.array([" web", "store", "", "web ", None, "a\x1fb"], dtype=object))
    assert labels[codes[codes >= 0]].tolist() == ["web", "store", "web", "a b"]
    assert codes[[2, 4]].tolist() == [-1, -1]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "persona"}, "coldstart.strategy"),
        ({"columns": "SEGMENT"}, "coldstart.columns"),
        ({"columns": ["SEGMENT", "SEGMENT"]}, "coldstart.columns"),
        ({"columns": ["USER_ID"]}, "coldstart.columns"),
        ({"smoothing": -1}, "coldstart.smoothing"),
        ({"min_support": 0}, "coldstart.min_support"),
        ({"min_suport": 3}, "coldstart.min_suport"),
    ],
)
def test_bad_params_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(StageError, match=message):
        parse(ColdStartParams.from_section, "coldstart", values)


def test_defaults_parse() -> None:
    params = parse(ColdStartParams.from_section, "coldstart", {"columns": ["SEGMENT"]})
    assert params == ColdStartParams("attributes", ("SEGMENT",), 20.0, 20)


def test_bad_bundle_arrays_are_refused() -> None:
    train, attrs = shop()
    arrays = build_coldstart(train, attrs, PARAMS, 6).arrays()
    with pytest.raises(StageError, match="inconsistent"):
        ColdStart.from_arrays(arrays, 5)  # lists index items beyond a 5-item catalogue
    with pytest.raises(StageError, match="missing array"):
        ColdStart.from_arrays({k: v for k, v in arrays.items() if k != "lists"}, N_ITEMS)


def test_evaluate_scores_every_strategy_on_newcomers_and_serves_the_chosen_one() -> None:
    train, attrs = shop()
    # held out: each user's first item; the last 20 users of each segment lose all history
    coo = train.tocoo()
    first = np.unique(coo.row, return_index=True)[1]
    held = np.zeros(coo.nnz, dtype=bool)
    held[first] = True
    newcomer = np.isin(coo.row, np.r_[40:60, 80:100])
    held |= newcomer
    shape = train.shape
    test = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=shape)
    fit = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=shape)
    models = {
        name: build_coldstart(fit, attrs, ColdStartParams(name, PARAMS.columns, 5.0, 5), 6)
        for name in ("attributes", "popular", "apportioned")
    }
    model = PopularModel.fit(fit, PopularParams(), threads=1)
    params = EvaluateParams(k=3, bootstrap_samples=200)
    common = dict(segments=attrs["SEGMENT"], cold_start=models, attributes=attrs)
    metrics, _, per_user, _ = evaluate_model(
        model, fit, test, params, models["apportioned"].lists[0], served="attributes", **common
    )
    cold = metrics["cold_start"]
    assert cold["users"] == 40 and cold["served"] == "attributes"
    assert {"attributes", "popular", "apportioned", "model"} <= set(cold)
    for seg in ("web", "store"):
        part = cold["segments"][seg]
        assert part["users"] == 20
        assert part["attributes"]["map_at_k"] >= part["popular"]["map_at_k"]
        low, high = part["attributes"]["map_at_k_ci_low"], part["attributes"]["map_at_k_ci_high"]
        assert low <= part["attributes"]["map_at_k"] <= high
    # web newcomers: most-popular is the store's snacks, the attribute path their persona's
    assert cold["segments"]["web"]["served_vs_popular"]["map_at_k_ci_low"] > 0
    assert metrics["served"]["fallback_users"] == 40
    assert per_user["served_ap"].shape == per_user["ap"].shape
    popular, _, _, _ = evaluate_model(
        model, fit, test, params, models["apportioned"].lists[0], served="popular", **common
    )
    assert metrics["served"]["map_at_k"] > popular["served"]["map_at_k"]
    assert popular["cold_start"]["served_vs_popular"]["map_at_k"] == 0.0
