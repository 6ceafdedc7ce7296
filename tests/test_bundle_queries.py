"""What a service asks the bundle beyond a known user's list: scores, anonymous sessions,
similar items and item metadata, checked against implicit's own ALS answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.bundle import FALLBACK, ITEMS_FILE, PERSONALISED, build_bundle, load_bundle
from recsys.errors import StageError
from recsys.fallback import ExportParams
from recsys.families.als import AlsModel
from recsys.ids import load_item_metadata
from recsys.io import write_npz

N_USERS, N_ITEMS, TOP_N = 80, 40, 10
ALPHA, REGULARIZATION = 4.0, 0.05
ITEM_IDS = np.array([f"sku-{i:02d}" for i in range(N_ITEMS)])


@pytest.fixture(scope="module")
def fitted() -> tuple[sp.csr_matrix, AlternatingLeastSquares]:
    rng = np.random.default_rng(3)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.12).astype(np.float32)
    dense[np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS] = 1
    train = sp.csr_matrix(dense)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=6,
            iterations=4,
            alpha=ALPHA,
            regularization=REGULARIZATION,
            random_state=0,
            num_threads=1,
            dtype=np.float32,
        )
        model.fit(train, show_progress=False)
    return train, model


def catalogue_csv(path: Path) -> Path:
    lines = ["ITEM_ID,PRICE,CATEGORY_L1,CATEGORY_L2,PRODUCT_DESCRIPTION,GENDER"]
    for i, item in enumerate(ITEM_IDS.tolist()):
        price = "" if i == 1 else ("n/a" if i == 2 else f"{i + 0.99:.2f}")
        description = "" if i % 2 else f'"Item {i}, handmade"'
        lines.append(f"{item},{price},cat{i % 3},style{i % 5},{description},F")
    path.write_text("\n".join(lines[:-1]) + "\n")  # the last item is not in the catalogue
    return path


@pytest.fixture(scope="module")
def bundle_dir(fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, model = fitted
    base = tmp_path_factory.mktemp("queries")
    out = base / "bundle"
    out.mkdir()
    build_bundle(
        out,
        AlsModel.from_factors(
            model.user_factors, model.item_factors, 1, regularization=REGULARIZATION, alpha=ALPHA
        ),
        train,
        np.array([str(i + 1) for i in range(N_USERS)]),
        ITEM_IDS,
        None,
        ExportParams(top_n=TOP_N, fallback_size=15),
        {"params": {"als": {"alpha": ALPHA, "regularization": REGULARIZATION}}},
        load_item_metadata(catalogue_csv(base / "items.csv"), ITEM_IDS),
    )
    return out


def test_recommend_carries_the_precomputed_scores(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    recs = bundle.recommend("1", 5)
    with np.load(bundle_dir / "recommendations.npz", allow_pickle=False) as data:
        assert recs.scores == data["scores"][0, :5].tolist()
    assert recs.scores == sorted(recs.scores, reverse=True)
    assert bundle.recommend("nobody", 5).scores is None


def test_session_fold_in_matches_implicits_recalculated_user(fitted, bundle_dir: Path) -> None:
    _, model = fitted
    bundle = load_bundle(bundle_dir)
    session = [3, 17, 17, 25]
    row = sp.csr_matrix(
        (np.ones(3, dtype=np.float32), ([0, 0, 0], [3, 17, 25])), shape=(1, N_ITEMS)
    )
    with threadpool_limits(1, "blas"):
        ids, scores = model.recommend(0, row, N=8, recalculate_user=True)
    recs, unknown = bundle.recommend_session([f"sku-{i:02d}" for i in session] + ["nope"], 8)
    assert recs.source == PERSONALISED and unknown == ["nope"]
    assert list(recs) == ITEM_IDS[ids].tolist()
    np.testing.assert_allclose(recs.scores, scores, rtol=1e-3, atol=1e-4)
    assert not {"sku-03", "sku-17", "sku-25"} & set(recs)


def test_session_without_known_items_gets_the_fallback(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    recs, unknown = bundle.recommend_session(["x", "y", "x"], 4)
    assert recs.source == FALLBACK and recs.scores is None
    assert list(recs) == bundle.fallback[:4].tolist() and unknown == ["x", "y", "x"]
    empty, none = bundle.recommend_session([], 4)
    assert empty.source == FALLBACK and none == []


def test_similar_items_match_implicit_without_the_item_itself(fitted, bundle_dir: Path) -> None:
    _, model = fitted
    bundle = load_bundle(bundle_dir)
    with threadpool_limits(1, "blas"):
        ids, scores = model.similar_items(7, N=7)
    ids, scores = ids[ids != 7][:6], scores[ids != 7][:6]
    recs = bundle.similar_items("sku-07", 6)
    assert list(recs) == ITEM_IDS[ids].tolist() and "sku-07" not in recs
    np.testing.assert_allclose(recs.scores, scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(StageError, match="item_id 'sku-99' is not in the bundle"):
        bundle.similar_items("sku-99", 3)
    for bad in (0, TOP_N + 1):
        with pytest.raises(StageError, match="n = "):
            bundle.similar_items("sku-07", bad)


def test_item_metadata_from_the_catalogue(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    first, no_price, bad_price, odd, last, unknown = bundle.item_metadata(
        ["sku-00", "sku-01", "sku-02", "sku-03", f"sku-{N_ITEMS - 1}", "other"]
    )
    assert first == {
        "category": "cat0",
        "style": "style0",
        "price": 0.99,
        "description": "Item 0, handmade",
    }
    assert no_price == {"category": "cat1", "style": "style1"}  # "" price, odd: no description
    assert bad_price == {"category": "cat2", "style": "style2", "description": "Item 2, handmade"}
    assert odd == {"category": "cat0", "style": "style3", "price": 3.99}
    assert last == {} and unknown == {}
    assert ITEMS_FILE in bundle.metadata["files_md5"]


def test_a_catalogue_without_metadata_gives_a_bundle_without_items_file(
    fitted, tmp_path: Path
) -> None:
    train, model = fitted
    assert load_item_metadata(tmp_path / "absent.csv", ITEM_IDS) == {}
    bare = tmp_path / "items.csv"
    bare.write_text("ITEM_ID,CATEGORY_L1,PRICE\n" + "".join(f"{i},,\n" for i in ITEM_IDS))
    assert load_item_metadata(bare, ITEM_IDS) == {}
    out = tmp_path / "bundle"
    out.mkdir()
    meta = build_bundle(
        out,
        AlsModel.from_factors(
            model.user_factors, model.item_factors, 1, regularization=REGULARIZATION, alpha=ALPHA
        ),
        train,
        np.array([str(i + 1) for i in range(N_USERS)]),
        ITEM_IDS,
        None,
        ExportParams(top_n=TOP_N, fallback_size=15),
        {},
        {},
    )
    assert ITEMS_FILE not in meta["files_md5"] and not (out / ITEMS_FILE).exists()
    bundle = load_bundle(out)
    assert bundle.item_metadata(["sku-00"]) == [{}]
    assert len(bundle.recommend_session(["sku-00"], 3)[0]) == 3


def test_bundle_identity_and_a_tampered_items_file(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert len(bundle.md5) == 32 and bundle.version == bundle.md5[:12]
    assert load_bundle(bundle_dir).md5 == bundle.md5
    changed = tmp_path / "changed"
    shutil.copytree(bundle_dir, changed)
    write_npz(changed / ITEMS_FILE, category=np.array(["x"] * N_ITEMS))
    with pytest.raises(StageError, match="items.npz: corrupt"):
        load_bundle(changed)
