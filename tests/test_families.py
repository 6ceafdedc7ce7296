"""Every model family through the one interface, on a small clustered matrix with real
implicit models: save/load, known users, anonymous sessions, similar items, agreement with
implicit's own evaluation, determinism, and the refusals (EASE too large, bad params)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from implicit.evaluation import ranking_metrics_at_k
from threadpoolctl import threadpool_limits

from recsys.bundle import BUNDLE_FORMAT, PERSONALISED, build_bundle, load_bundle
from recsys.errors import StageError, UnknownIdError
from recsys.evaluation import score_model_and_baseline
from recsys.fallback import ExportParams
from recsys.families import FAMILIES, Family, ModelParams, load_model
from recsys.families.base import top_k_dense
from recsys.families.ease import MAX_ITEMS, EaseModel, EaseParams
from recsys.families.itemknn import ItemKnnParams
from recsys.families.rp3beta import Rp3betaParams, rp3beta_similarity
from recsys.io import load_npz, save_csr
from recsys.metrics import hits_matrix
from recsys.params import load
from tests.helpers import ROOT, parse, run_module
from tests.test_evaluate import split_matrix

SMALL = {
    "als": {"factors": 8, "regularization": 0.05, "alpha": 5.0, "iterations": 4,
            "use_cg": True, "random_state": 3},
    "bpr": {"factors": 8, "learning_rate": 0.05, "regularization": 0.01, "iterations": 30,
            "verify_negative_samples": True, "random_state": 3},
    "lmf": {"factors": 8, "learning_rate": 1.0, "regularization": 0.6, "iterations": 10,
            "neg_prop": 10, "random_state": 3},
    "itemknn": {"similarity": "cosine", "neighbours": 20, "bm25_k1": 1.2, "bm25_b": 0.75},
    "ease": {"l2": 10.0},
    "rp3beta": {"alpha": 1.0, "beta": 0.5, "neighbours": 20},
    "popular": {},
    "spark_als": {"factors": 8, "iterations": 4, "regularization": 0.05, "alpha": 5.0,
                  "user_blocks": 2, "item_blocks": 2, "seed": 3, "checkpoint_interval": 2,
                  "master": "local[2]", "driver_memory": "1g", "executor_memory": "1g"},
    "rerank": {"generators": ["ease", "rp3beta", "category_popular"], "candidates": 10,
               "validation_fraction": 0.25, "carves": 1, "ranker_users": 0, "trees": 20,
               "learning_rate": 0.1, "leaves": 7, "min_child_samples": 5, "seed": 3,
               "ease": {"l2": 10.0}, "rp3beta": {"alpha": 1.0, "beta": 0.5, "neighbours": 20}},
}  # fmt: skip
K = 10
# Every family, Spark's behind the slow marker: its JVM costs more than the rest of the file.
EVERY_FAMILY = [
    pytest.param(name, marks=pytest.mark.slow) if name == "spark_als" else name for name in FAMILIES
]


def params(name: str, **overrides: object):
    family = FAMILIES[name]
    return replace(parse(family.Params.from_section, name, SMALL[name]), **overrides)


@pytest.fixture(scope="module")
def split() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    return split_matrix()


class Fitted(dict):
    """Each family fitted once on the split, when a test first asks for it."""

    def __init__(self, train: sp.csr_matrix) -> None:
        super().__init__()
        self.train = train

    def __missing__(self, name: str) -> Family:
        self[name] = FAMILIES[name].fit(self.train, params(name), 1)
        return self[name]


@pytest.fixture(scope="module")
def fitted(split) -> Fitted:
    return Fitted(split[0])


def test_the_registry_names_every_family_and_its_section() -> None:
    assert list(FAMILIES) == [
        "als", "bpr", "lmf", "itemknn", "ease", "rp3beta", "popular", "spark_als", "rerank"
    ]  # fmt: skip
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert shipped["model"] == {"type": "als"}
    assert set(SMALL) == set(FAMILIES) and all(name in shipped for name in FAMILIES)


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_save_load_gives_the_same_lists(fitted, split, tmp_path: Path, name: str) -> None:
    train, test = split
    model = fitted[name]
    path = tmp_path / f"{name}.npz"
    model.save(path)
    again = load_model(path, name, train.shape, threads=1)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ids, scores = model.recommend(users, train, K)
    ids2, scores2 = again.recommend(users, train, K)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(scores, scores2)
    # training items never come back, no item twice, best first
    assert not hits_matrix(ids, train[users]).any()
    hits_matrix(ids, test[users])  # raises on a repeated id
    both = (ids[:, 1:] >= 0) & (ids[:, :-1] >= 0)
    assert (np.diff(scores, axis=1)[both] <= 0).all()
    assert not ((ids[:, 1:] >= 0) & (ids[:, :-1] < 0)).any()  # empty slots only at the end
    # saving is deterministic, and the serving copy drops what only known users need
    assert model.save(tmp_path / "again.npz") == model.save(path)
    model.save(tmp_path / "serving.npz", serving=True)
    serving = load_npz(tmp_path / "serving.npz")
    assert not set(model.USER_ARRAYS) & set(serving)
    served = load_model(tmp_path / "serving.npz", name, (None, train.shape[1]), threads=1)
    assert served.similar_items(0, 5)[0].tolist() == model.similar_items(0, 5)[0].tolist()


def test_a_model_file_of_another_family_is_refused(fitted, split, tmp_path: Path) -> None:
    fitted["ease"].save(tmp_path / "als.npz")
    with pytest.raises(StageError, match=r"als.npz: holds a ease model; expected als"):
        load_model(tmp_path / "als.npz", "als", split[0].shape, threads=1)


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_every_family_learns_something(fitted, split, name: str) -> None:
    train, test = split
    scored = score_model_and_baseline(fitted[name], train, test, K)
    model_map = scored["model"]["map_at_k"][-1]
    baseline = scored["baseline"]["map_at_k"][-1]
    if name == "popular":  # the same ranking as the baseline
        np.testing.assert_array_equal(scored["model_recs"], scored["baseline_recs"])
    elif name != "bpr":  # BPR needs many more epochs than a unit test affords
        assert model_map > baseline, (name, model_map, baseline)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("bpr", {}), ("lmf", {}), ("itemknn", {}), ("itemknn", {"similarity": "bm25"}),
     ("itemknn", {"similarity": "tfidf"})],
)  # fmt: skip
def test_scoring_agrees_with_implicits_evaluation(split, name: str, overrides: dict) -> None:
    """ALS has the same check in test_evaluate.py."""
    train, test = split
    model = FAMILIES[name].fit(train, params(name, **overrides), 1)
    ours = score_model_and_baseline(model, train, test, K)["model"]
    with threadpool_limits(1, "blas"):
        theirs = ranking_metrics_at_k(
            model.implicit_model, train, test, K=K, show_progress=False, num_threads=1
        )
    assert ours["map_at_k"][-1] == pytest.approx(theirs["map"], abs=1e-6)
    assert ours["ndcg_at_k"][-1] == pytest.approx(theirs["ndcg"], abs=1e-6)


@pytest.mark.parametrize("name", ["als", "bpr", "lmf", "itemknn", "ease", "rp3beta"])
def test_the_thread_count_never_changes_the_model(split, tmp_path: Path, name: str) -> None:
    train, _ = split
    one = FAMILIES[name].fit(train, params(name), 1).save(tmp_path / "one.npz")
    two = FAMILIES[name].fit(train, params(name), 2).save(tmp_path / "two.npz")
    assert one == two


def test_als_session_is_implicits_fold_in(fitted, split) -> None:
    train, _ = split
    model = fitted["als"]
    user = int(np.argmax(np.diff(train.indptr)))
    row = train[user]
    scores = model.score_session(row)[0]
    implicit = model.implicit_model
    ids, expected = implicit.recommend(
        0, row, N=K, recalculate_user=True, filter_already_liked_items=True
    )
    order = np.argsort(-np.where(np.isin(np.arange(train.shape[1]), row.indices), -np.inf, scores))
    assert order[:K].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[ids], expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["itemknn", "ease", "rp3beta", "popular"])
def test_a_session_of_a_users_items_scores_like_that_user(fitted, split, name: str) -> None:
    """Similarity families score a session exactly as they score a known user."""
    train, _ = split
    model = fitted[name]
    users = np.array([0, 7, 42])
    ids, scores = model.recommend(users, train, K)
    block = model.score_session(train[users])
    block = np.where(np.isnan(block), -np.inf, block)
    block[np.repeat(np.arange(3), np.diff(train[users].indptr)), train[users].indices] = -np.inf
    session_ids, session_scores = top_k_dense(block.astype(np.float32), K)
    np.testing.assert_array_equal(session_ids, ids)
    np.testing.assert_allclose(session_scores, scores, rtol=1e-6)


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_similar_items_exclude_the_item_and_come_best_first(fitted, name: str) -> None:
    ids, scores = fitted[name].similar_items(3, 8)
    assert 0 < ids.size <= 8 and 3 not in ids.tolist()
    assert len(set(ids.tolist())) == ids.size
    assert (np.diff(scores) <= 0).all() and ids.dtype == np.int32


def test_ease_is_the_closed_form(split) -> None:
    train, _ = split
    model = EaseModel.fit(train, EaseParams(l2=10.0), 1)
    x = (train.toarray() > 0).astype(np.float64)
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.similarity, b, atol=2e-5)
    assert model.similarity.dtype == np.float32


def test_rp3beta_is_the_random_walk(split) -> None:
    train, _ = split
    n_items = train.shape[1]
    got = rp3beta_similarity(train, Rp3betaParams(alpha=0.8, beta=0.3, neighbours=n_items))
    x = (train.toarray() > 0).astype(np.float64)
    p_ui = x / np.maximum(x.sum(axis=1, keepdims=True), 1)
    p_iu = x.T / np.maximum(x.T.sum(axis=1, keepdims=True), 1)
    w = (p_iu**0.8) @ (p_ui**0.8) / np.maximum(x.sum(axis=0), 1)[None, :] ** 0.3
    np.fill_diagonal(w, 0.0)
    np.testing.assert_allclose(got.toarray(), w, rtol=1e-4, atol=1e-7)
    few = rp3beta_similarity(train, Rp3betaParams(alpha=0.8, beta=0.3, neighbours=3))
    assert few.getnnz(axis=1).max() == 3
    # the kept weights are each row's largest
    row = int(np.argmax(few.getnnz(axis=1)))
    assert sorted(few[row].data.tolist()) == pytest.approx(sorted(np.sort(w[row])[-3:]), rel=1e-4)


def test_top_k_breaks_ties_by_the_lower_item() -> None:
    scores = np.array([[1, 3, 3, 3, 0, -np.inf], [2, 2, 2, 2, 2, 2]], dtype=np.float32)
    ids, vals = top_k_dense(scores, 3)
    assert ids.tolist() == [[1, 2, 3], [0, 1, 2]]
    ids, vals = top_k_dense(scores[:1], 7)
    assert ids.tolist() == [[1, 2, 3, 0, 4, -1, -1]] and np.isnan(vals[0, 5:]).all()


# --------------------------------------------------------------------------- refusals


def test_ease_refuses_a_catalogue_too_large_for_its_dense_matrix(tmp_path: Path) -> None:
    n_items = MAX_ITEMS + 1
    with pytest.raises(StageError, match=rf"{n_items:,} items need about .* GiB"):
        EaseModel.preflight((10, n_items), EaseParams(l2=1.0), 1)
    # through the stage: one line, before any work, no model written
    (tmp_path / "data").mkdir()
    train = sp.csr_matrix(
        (np.ones(3, np.float32), ([0, 1, 2], [0, 5, n_items - 1])), shape=(3, n_items)
    )
    save_csr(tmp_path / "data/train.npz", train)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"model": {"type": "ease"}, "ease": {"l2": 1.0}, "runtime": {"threads": 1}})
    )
    proc = run_module("stages.train", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.type = ease: "), lines
    assert f"the limit is {MAX_ITEMS:,} items" in lines[0] and "GiB" in lines[0]
    assert not (tmp_path / "models/ease.npz").exists()


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"type": "svd"}, "model.type = 'svd'; expected one of als, bpr, lmf"),
        ("itemknn", SMALL["itemknn"] | {"similarity": "jaccard"},
         "itemknn.similarity = 'jaccard'; expected one of cosine, bm25, tfidf"),
        ("itemknn", SMALL["itemknn"] | {"neighbours": 0}, "itemknn.neighbours = 0; expected"),
        ("ease", {"l2": 0}, "ease.l2 = 0.0; expected a number > 0.0"),
        ("ease", {"l2": 1, "lambda": 2}, "unknown param ease.lambda"),
        ("rp3beta", SMALL["rp3beta"] | {"beta": -1}, "rp3beta.beta = -1.0; expected"),
        ("bpr", SMALL["bpr"] | {"learning_rate": 0}, "bpr.learning_rate = 0.0"),
        ("lmf", SMALL["lmf"] | {"neg_prop": "many"}, "lmf.neg_prop = 'many'"),
        ("popular", {"size": 3}, "unknown param popular.size"),
    ],
)  # fmt: skip
def test_bad_family_params_are_one_line(
    tmp_path: Path, section: str, values: dict, message: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({section: values}))
    parse_section = ModelParams.from_section if section == "model" else None
    parse_section = parse_section or FAMILIES[section].Params.from_section
    with pytest.raises(StageError) as info:
        load(parse_section, section, path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bad_family_param_stops_train_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"model": {"type": "itemknn"}, "itemknn": SMALL["itemknn"] | {"K": 5}})
    )
    proc = run_module("stages.train", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: params.yaml: unknown param itemknn.K; known keys: ")
    assert proc.stderr.count("\n") == 1


def test_itemknn_params_pick_implicits_recommender() -> None:
    bm25 = parse(ItemKnnParams.from_section, "itemknn", SMALL["itemknn"] | {"similarity": "bm25"})
    model = bm25.implicit_model(1)
    assert type(model).__name__ == "BM25Recommender" and (model.K, model.K1, model.B) == (
        20, 1.2, 0.75
    )  # fmt: skip


# --------------------------------------------------------------------------- the bundle


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_bundle_serves_users_sessions_and_similar_items(
    fitted,
    split,
    tmp_path: Path,
    name: str,
) -> None:
    train, _ = split
    n_users, n_items = train.shape
    users = np.array([f"u{i}" for i in range(n_users)])
    items = np.array([f"i{i}" for i in range(n_items)])
    out = tmp_path / "bundle"
    out.mkdir()
    meta = build_bundle(out, fitted[name], train, users, items, None, ExportParams(8, 8), {})
    assert meta["model_type"] == name and meta["format"] == BUNDLE_FORMAT
    bundle = load_bundle(out)

    recs = bundle.recommend("u0", 5)
    assert recs.source == PERSONALISED and len(recs.scores) == len(recs) > 0
    assert recs.scores == sorted(recs.scores, reverse=True)
    assert bundle.recommend("stranger", 5).scores is None

    session = [f"i{i}" for i in train[0].indices] + ["no-such-item"]
    recs, unknown = bundle.recommend_session(session, 5)
    assert unknown == ["no-such-item"]
    assert recs.source == PERSONALISED and not recs.known and len(recs.scores) == len(recs)
    assert not set(recs) & set(session) and 0 < len(recs) <= 5
    if name in ("ease", "rp3beta", "popular"):  # binary rows: scored exactly like user u0
        assert list(recs) == list(bundle.recommend("u0", 5))[: len(recs)]
    nothing, unknown = bundle.recommend_session(["x", "y"], 4)
    assert nothing.is_fallback and nothing.scores is None and unknown == ["x", "y"]
    assert list(nothing) == bundle.fallback[:4].tolist()

    similar = bundle.similar_items("i3", 6)
    assert "i3" not in similar and len(similar.scores) == len(similar) > 0
    with pytest.raises(UnknownIdError, match="item_id 'nope' is not in the bundle") as unknown:
        bundle.similar_items("nope", 3)
    assert unknown.value.field == "item_id"  # the service's 404 names it
