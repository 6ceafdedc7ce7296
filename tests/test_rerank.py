"""The two-stage family (`model.type: rerank`) on a small clustered matrix with a catalogue,
with real implicit and real LightGBM: the test pairs never reach the ranker, the same params
give the same bytes, the file is pickle-free and round-trips, known users and sessions are
scored, params are validated, the order of a user's items comes from the training pairs'
first events only, and the pipeline runs it end to end (slow)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from recsys.confidence import load_events
from recsys.errors import StageError
from recsys.evaluation import score_model_and_baseline
from recsys.families import load_model
from recsys.families.rerank import (
    ItemFeatures,
    RerankModel,
    RerankParams,
    carve,
    first_seen,
    lead_pairs,
    load_item_features,
)
from recsys.ids import save_ids
from recsys.io import load_npz, md5sum, save_csr
from recsys.metrics import hits_matrix
from tests.helpers import copy_reproduced, parse, run, run_module, set_params
from tests.served import invoke_lambda
from tests.test_evaluate import GROUPS, split_matrix

SMALL = {
    "generators": ["ease", "rp3beta", "als", "category_popular"],
    "candidates": 12,
    "validation_fraction": 0.25,
    "carves": 1,
    "ranker_users": 0,
    "trees": 20,
    "learning_rate": 0.1,
    "leaves": 7,
    "min_child_samples": 5,
    "seed": 3,
    "ease": {"l2": 10.0},
    "rp3beta": {"alpha": 1.0, "beta": 0.5, "neighbours": 20},
    "als": {"factors": 8, "regularization": 0.05, "alpha": 5.0, "iterations": 3,
            "use_cg": True, "random_state": 3, "track_loss": False},
}  # fmt: skip
K = 10


def params(**overrides: object) -> RerankParams:
    return replace(parse(RerankParams.from_section, "rerank", SMALL), **overrides)


def catalogue(n_items: int) -> pd.DataFrame:
    """Items of the clustered matrix: category = cluster (item % GROUPS), a few gendered."""
    rng = np.random.default_rng(1)
    item = np.arange(n_items)
    return pd.DataFrame(
        {
            "ITEM_ID": [f"i{i}" for i in item],
            "PRICE": np.round(rng.uniform(1, 300, n_items), 2),
            "CATEGORY_L1": [f"c{i % GROUPS}" for i in item],
            "CATEGORY_L2": [f"s{i % (2 * GROUPS)}" for i in item],
            "GENDER": np.where(item % 7 == 0, "F", np.where(item % 7 == 1, "M", "")),
        }
    )


def user_names(n_users: int) -> np.ndarray:
    return np.array([f"u{u:04d}" for u in range(n_users)])  # sorted as the rows


def item_names(n_items: int) -> np.ndarray:
    return np.array([f"i{i:03d}" for i in range(n_items)])


def event_log(matrix: sp.csr_matrix, seed: int) -> pd.DataFrame:
    """Events on the pairs of `matrix`: a View at a seeded random time, and on every other
    pair a later AddToCart."""
    coo = matrix.tocoo()
    times = np.random.default_rng(seed).integers(1_700_000_000, 1_700_100_000, coo.nnz)
    view = pd.DataFrame({
        "ITEM_ID": item_names(matrix.shape[1])[coo.col],
        "USER_ID": user_names(matrix.shape[0])[coo.row],
        "EVENT_TYPE": "View", "TIMESTAMP": times, "DISCOUNT": "No",
    })  # fmt: skip
    cart = view.iloc[::2].assign(EVENT_TYPE="AddToCart", TIMESTAMP=lambda f: f.TIMESTAMP + 60)
    return pd.concat([view, cart]).sort_values(["TIMESTAMP", "USER_ID", "ITEM_ID"])


def times(log: pd.DataFrame, train: sp.csr_matrix, folder: Path) -> sp.csr_matrix:
    """`first_seen` of `train`'s pairs from `log`, read as the train stage reads it."""
    log.to_csv(folder / "interactions.csv", index=False)
    events = load_events(folder / "interactions.csv")
    return first_seen(events, train, user_names(train.shape[0]), item_names(train.shape[1]))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    train, test = split_matrix()
    folder = tmp_path_factory.mktemp("catalogue")
    catalogue(train.shape[1]).to_csv(folder / "items.csv", index=False)
    items = load_item_features(folder / "items.csv", np.array([f"i{i}" for i in range(60)]))
    order = times(pd.concat([event_log(train, 0), event_log(test, 1)]), train, folder)
    return train, test, items, order


@pytest.fixture(scope="module")
def model(data) -> RerankModel:
    train, _, items, order = data
    return RerankModel.fit(train, params(), 1, items=items, first_seen=order)


def test_item_features_come_from_the_catalogue(data) -> None:
    _, _, items, _ = data
    assert items.category.tolist()[:7] == [1, 2, 3, 4, 5, 6, 1]  # sorted labels, 0 = unknown
    assert items.gender.tolist()[:3] == [1, 2, 0]  # F, M, none
    assert np.isfinite(items.log_price).all() and items.style.max() == 2 * GROUPS


def test_the_ranker_learns_more_than_its_generators(model, data) -> None:
    train, test, _, _ = data
    ours = score_model_and_baseline(model, train, test, K)
    assert ours["model"]["map_at_k"][-1] > ours["baseline"]["map_at_k"][-1]
    ids = ours["model_recs"]
    users = ours["users"]
    assert not hits_matrix(ids, train[users]).any()  # training items never come back
    hits_matrix(ids, test[users])  # raises on a repeated id


def test_the_carve_holds_out_training_pairs_only(data) -> None:
    train, _, _, _ = data
    inner, valid = carve(train, 0.25, 3)
    assert inner.nnz + valid.nnz == train.nnz and valid.nnz == round(0.25 * train.nnz)
    assert ((inner + valid) != train).nnz == 0
    assert inner.multiply(valid).nnz == 0


def test_the_test_pairs_never_reach_the_ranker(data, tmp_path: Path) -> None:
    """The train stage with two different test splits beside the same training pairs writes
    the same model bytes; training on the test pairs too would change them."""
    train, test, _, _ = data
    n_users, n_items = train.shape
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    save_csr(repo / "data/train.npz", train)
    save_ids(repo / "data/item_ids.csv", "ITEM_ID", item_names(n_items))
    save_ids(repo / "data/user_ids.csv", "USER_ID", user_names(n_users))
    items = catalogue(n_items).assign(ITEM_ID=item_names(n_items))
    items.to_csv(repo / "data/items.csv", index=False)
    (repo / "params.yaml").write_text(
        yaml.safe_dump({"model": {"type": "rerank"}, "rerank": SMALL, "runtime": {"threads": 1}})
    )
    md5s = []
    rng = np.random.default_rng(0)
    permuted = sp.csr_matrix(test[rng.permutation(n_users)][:, rng.permutation(n_items)])
    for seed, held_out in enumerate((test, permuted), start=1):
        save_csr(repo / "data/test.npz", held_out)
        # the log holds the held-out pairs' events too, at other times for each split (a
        # permuted pair that is a training pair is not held out: a split holds it once)
        coo = held_out.tocoo()
        apart = np.asarray(train[coo.row, coo.col]).ravel() == 0
        only = sp.csr_matrix((coo.data[apart], (coo.row[apart], coo.col[apart])), train.shape)
        log = pd.concat([event_log(train, 0), event_log(only, seed)])
        log.to_csv(repo / "data/interactions.csv", index=False)
        proc = run_module("stages.train", cwd=repo)
        assert proc.returncode == 0, proc.stderr
        md5s.append(md5sum(repo / "models/rerank.npz"))
    assert md5s[0] == md5s[1]
    ranker = load_npz(repo / "models/rerank.npz")["ranker"].tobytes()
    assert b"tree" in ranker and b"num_threads" not in ranker
    # the ranker does depend on the pairs it is given: fitted on train + test it differs
    leaked = RerankModel.fit(
        train + test,
        params(),
        1,
        items=load_item_features(repo / "data/items.csv", item_names(n_items)),
        first_seen=times(  # fmt: skip
            pd.concat([event_log(train, 0), event_log(test, 1)]), train + test, tmp_path
        ),
    )
    assert leaked.save(tmp_path / "leaked.npz") != md5s[0]


def test_first_seen_is_each_training_pairs_first_event(tmp_path: Path) -> None:
    """The earliest event of each training pair, in the train's sparsity; the events of
    other pairs (held-out ones) change nothing."""
    train = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.float32))
    log = pd.DataFrame({
        "ITEM_ID": ["i000", "i000", "i002", "i001", "i001", "i001"],
        "USER_ID": ["u0000", "u0000", "u0000", "u0001", "u0001", "u0000"],
        "EVENT_TYPE": "View", "TIMESTAMP": [50, 40, 70, 20, 10, 1], "DISCOUNT": "No",
    })  # fmt: skip
    order = times(log, train, tmp_path)
    assert order.toarray().tolist() == [[40, 0, 70], [0, 10, 0]]
    assert np.array_equal(order.indices, train.indices)  # (u0000, i001) is held out: no time
    again = times(log.iloc[:-1], train, tmp_path)  # without the held-out pair's event
    assert np.array_equal(again.data, order.data)


def test_the_lead_is_the_first_item_of_each_category(data) -> None:
    """One lead per (user, category used): the item seen first, ties to the lower item."""
    train, _, items, order = data
    leads = lead_pairs(train, order, items.category)
    x = train.tocoo()
    used = {(u, items.category[i]) for u, i in zip(x.row, x.col, strict=True)}
    assert leads.nnz == len(used)
    coo = leads.tocoo()
    for u, i in zip(coo.row[:50], coo.col[:50], strict=True):
        row = train[u].indices
        same = row[items.category[row] == items.category[i]]
        first = min(same, key=lambda j: (order[u, j], j))
        assert i == first
    # the model keeps the whole train's leads for known users; the serving copy drops them
    model = RerankModel.fit(train, params(trees=5), 1, items=items, first_seen=order)
    assert (model.leads != leads).nnz == 0
    assert "leads_indices" in model.USER_ARRAYS


def test_same_params_same_bytes_whatever_the_threads(model, data, tmp_path: Path) -> None:
    train, _, items, order = data
    again = RerankModel.fit(train, params(), 2, items=items, first_seen=order)
    assert again.save(tmp_path / "two.npz") == model.save(tmp_path / "one.npz")
    other = RerankModel.fit(train, params(seed=4), 1, items=items, first_seen=order)
    assert other.save(tmp_path / "seed.npz") != model.save(tmp_path / "one.npz")


def test_save_load_is_pickle_free_and_scores_the_same(model, data, tmp_path: Path) -> None:
    train, test, _, _ = data
    path = tmp_path / "rerank.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as raw:  # no object arrays anywhere
        assert all(raw[k].dtype != object for k in raw.files)
    again = load_model(path, "rerank", train.shape, threads=1)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ids, scores = model.recommend(users, train, K)
    ids2, scores2 = again.recommend(users, train, K)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(scores, scores2)
    # the serving copy drops the user factors and scores sessions as the full model does
    model.save(tmp_path / "serving.npz", serving=True)
    assert "als__user_factors" not in load_npz(tmp_path / "serving.npz")
    served = load_model(tmp_path / "serving.npz", "rerank", (None, train.shape[1]), threads=1)
    rows = train[users[:20]]
    np.testing.assert_array_equal(served.score_session(rows), model.score_session(rows))


def test_a_session_is_scored_from_its_items(model, data) -> None:
    train, _, _, _ = data
    users = np.array([0, 7, 42])
    rows = train[users]
    block = model.score_session(rows)
    assert block.shape == rows.shape and block.dtype == np.float32
    for i in range(3):  # three rows: candidates only, never the session's own items
        scored = np.flatnonzero(np.isfinite(block[i]))
        assert 0 < scored.size <= 4 * SMALL["candidates"]
        assert not set(scored) & set(rows[i].indices)
    # without factor generators a known user is a session of their items
    plain = RerankModel.fit(train, params(generators=("ease", "category_popular")), 1,
                            items=data[2])  # fmt: skip
    ids, scores = plain.recommend(users, train, K)
    session = plain.score_session(rows)
    order = np.argsort(-np.where(np.isnan(session), -np.inf, session), axis=1, kind="stable")
    np.testing.assert_array_equal(order[:, :K], ids)
    np.testing.assert_allclose(np.take_along_axis(session, ids, axis=1), scores)


def test_carves_average_their_rankers(data, tmp_path: Path) -> None:
    train, _, items, _ = data
    two = RerankModel.fit(train, params(carves=2, trees=5), 1, items=items)
    assert len(two.rankers) == 2 and two.rankers[0] != two.rankers[1]
    two.save(tmp_path / "two.npz")
    again = load_model(tmp_path / "two.npz", "rerank", train.shape, threads=1)
    assert again.rankers == two.rankers
    users = np.arange(30)
    _, _, feats = two._candidates(train[users], users)
    one = [RerankModel.__new__(RerankModel) for _ in range(2)]
    for model, text in zip(one, two.rankers, strict=True):
        model.rankers, model._boosters, model.threads = [text], [], 1
    mean = (one[0]._predict(feats).astype(np.float64) + one[1]._predict(feats)) / 2
    np.testing.assert_allclose(two._predict(feats), mean, rtol=1e-5, atol=1e-6)


def test_no_catalogue_still_fits(data) -> None:
    train, test, _, _ = data
    model = RerankModel.fit(train, params(generators=("rp3beta",), trees=5), 1)
    assert (model.recommend(np.array([0, 1]), train, K)[0] >= 0).any()
    assert (model.items.category == 0).all()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (SMALL | {"generators": ["ease", "svd"]}, "rerank.generators = ['ease', 'svd']; expected"),
        (SMALL | {"generators": []}, "rerank.generators = []; expected a non-empty list"),
        ({k: v for k, v in SMALL.items() if k != "ease"}, "missing rerank.ease"),
        (SMALL | {"ease": {"l2": 0}}, "rerank.ease.l2 = 0.0; expected a number > 0.0"),
        (SMALL | {"rp3beta": {"alpha": 1, "beta": 0.5, "neighbours": 5, "k": 1}},
         "unknown param rerank.rp3beta.k"),
        (SMALL | {"candidates": 0}, "rerank.candidates = 0; expected"),
        (SMALL | {"validation_fraction": 1.0}, "rerank.validation_fraction = 1.0; expected"),
        (SMALL | {"leafs": 3}, "unknown param rerank.leafs"),
    ],
)  # fmt: skip
def test_bad_params_are_one_line(values: dict, message: str) -> None:
    with pytest.raises(StageError) as info:
        parse(RerankParams.from_section, "rerank", values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_broken_model_file_is_refused(model, data, tmp_path: Path) -> None:
    train, _, _, _ = data
    arrays = model.arrays()
    from recsys.io import write_npz

    write_npz(tmp_path / "bad.npz", family=np.array("rerank"),
              **{k: v for k, v in arrays.items() if k != "ranker"})  # fmt: skip
    with pytest.raises(StageError, match="missing array 'ranker'"):
        load_model(tmp_path / "bad.npz", "rerank", train.shape, threads=1)
    write_npz(tmp_path / "bad.npz", family=np.array("rerank"),
              **(arrays | {"item_gender": arrays["item_gender"][:3]}))  # fmt: skip
    with pytest.raises(StageError, match="item_gender has shape"):
        load_model(tmp_path / "bad.npz", "rerank", train.shape, threads=1)


def test_empty_item_features() -> None:
    empty = ItemFeatures.empty(4)
    assert (empty.category == 0).all() and np.isnan(empty.log_price).all()


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.slow
@pytest.mark.dvc
def test_dvc_exp_run_rerank_reproduces_and_serves(reproduced_template, tmp_path: Path) -> None:
    """`dvc exp run -S model.type=rerank` on the small copy: train, evaluate and export run,
    the bundle answers known users and sessions, and a second run gives the same bytes."""
    from recsys.bundle import PERSONALISED, load_bundle

    repo = copy_reproduced(reproduced_template[0], tmp_path / "repo")
    set_params(repo, {"rerank": SMALL})
    run(["git", "commit", "-qam", "small rerank"], repo)
    run(["dvc", "exp", "run", "-S", "model.type=rerank"], repo)
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert metrics["map_at_k"] > metrics["baseline"]["map_at_k"]
    first = md5sum(repo / "models/rerank.npz")
    bundle = load_bundle(repo / "models/bundle")
    assert bundle.metadata["model_type"] == "rerank"
    user = str(bundle.user_ids[np.flatnonzero(bundle.personalised)[0]])
    assert bundle.recommend(user, 5).source == PERSONALISED
    session = bundle.item_ids[:2].tolist()
    recs, unknown = bundle.recommend_session(session, 5)
    assert recs.source == PERSONALISED and not unknown and len(recs) > 0
    # the Lambda handler answers from the rerank bundle: a known user and a session
    events = Path(__file__).parent / "lambda_events"
    user_event = json.loads((events / "user.json").read_text())
    user_event["rawPath"] = user_event["requestContext"]["http"]["path"] = (
        f"/recommendations/{user}"
    )
    session_event = json.loads((events / "session.json").read_text())
    session_event["body"] = json.dumps({"items": session, "n": 5})
    session_event["headers"]["content-length"] = str(len(session_event["body"]))
    for name, event in (("user", user_event), ("session", session_event)):
        (tmp_path / f"{name}.json").write_text(json.dumps(event))
    answers, log = invoke_lambda(
        [tmp_path / "user.json", tmp_path / "session.json"], BUNDLE_DIR=str(repo / "models/bundle")
    )
    got = [json.loads(answer["body"]) for answer in answers]
    assert [a["statusCode"] for a in answers] == [200, 200], got
    assert [x["item_id"] for x in got[0]["items"]] == list(bundle.recommend(user, 3))
    assert [x["item_id"] for x in got[1]["items"]] == list(recs)
    assert got[1]["source"] == PERSONALISED and "Traceback" not in log
    (repo / "models/rerank.npz").unlink()
    run(["dvc", "exp", "run", "-S", "model.type=rerank", "-f", "train"], repo)
    assert md5sum(repo / "models/rerank.npz") == first
