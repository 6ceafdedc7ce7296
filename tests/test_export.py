"""Export: a self-contained, pickle-free, byte-deterministic bundle from a real ALS model."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.bundle import build_bundle
from recsys.cli import run_stage
from recsys.fallback import ExportParams
from recsys.families.als import AlsModel, model_from_factors
from recsys.ids import save_ids
from recsys.io import save_csr, write_json
from recsys.ranking import top_k_unseen
from stages.export import main as export_main
from tests.helpers import run_module

TOP_N = 10
N_USERS, N_ITEMS = 80, 40
HEAVY_USER = 5  # more training items than TOP_N: goes through implicit's own filter
EMPTY_USER = 7  # every pair held out: no history


def tiny_shop(seed: int = 0) -> tuple[sp.csr_matrix, AlternatingLeastSquares]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.08) * rng.integers(1, 6, (N_USERS, N_ITEMS))
    dense[np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS] = 1  # everyone has history...
    dense[HEAVY_USER, : N_ITEMS - 4] = 1  # only 4 unseen items left: slots must stay empty
    dense[EMPTY_USER] = 0  # ...but this user
    train = sp.csr_matrix(dense.astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, iterations=3, random_state=0, num_threads=1)
        model.fit(train, show_progress=False)
    return train, model


def user_and_item_ids() -> tuple[np.ndarray, np.ndarray]:
    users = np.array([str(i + 1) for i in range(N_USERS)])
    items = np.array([f"item-{i:03d}" for i in range(N_ITEMS)])
    return users, items


def export_to(out: Path, train: sp.csr_matrix, model: AlternatingLeastSquares) -> dict:
    users, items = user_and_item_ids()
    categories = np.array([f"cat{i % 4}" for i in range(N_ITEMS)])
    out.mkdir()
    served = AlsModel.from_factors(model.user_factors, model.item_factors, threads=1)
    return build_bundle(
        out, served, train, users, items, categories, ExportParams(top_n=TOP_N, fallback_size=15),
        {"params": {"export": {"top_n": TOP_N}}},
    )  # fmt: skip


def test_bundle_loads_without_pickle_and_has_the_expected_arrays(tmp_path: Path) -> None:
    train, model = tiny_shop()
    meta = export_to(tmp_path / "bundle", train, model)
    files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert files == ["ids.npz", "metadata.json", "model.npz", "recommendations.npz"]
    arrays = {}
    for name in ("ids.npz", "model.npz", "recommendations.npz"):
        with np.load(tmp_path / "bundle" / name, allow_pickle=False) as data:
            arrays.update({k: data[k] for k in data.files})
    # the serving copy of the model: item side only (known users are precomputed)
    assert "user_factors" not in arrays and str(arrays["family"]) == "als"
    assert arrays["item_factors"].shape == (N_ITEMS, 8)
    assert arrays["item_factors"].dtype == np.float32
    assert float(arrays["alpha"]) == 1.0 and float(arrays["regularization"]) == 0.01
    assert arrays["user_ids"].dtype.kind == "U" and arrays["user_ids"].shape == (N_USERS,)
    assert arrays["item_ids"].dtype.kind == "U" and arrays["item_ids"].shape == (N_ITEMS,)
    assert arrays["items"].dtype == np.int32 and arrays["items"].shape == (N_USERS, TOP_N)
    assert arrays["scores"].dtype == np.float32 and arrays["scores"].shape == (N_USERS, TOP_N)
    assert arrays["fallback"].dtype.kind == "U" and arrays["fallback"].shape == (15,)
    assert set(arrays["fallback"]) <= set(arrays["item_ids"])
    recorded = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert recorded == meta
    assert recorded["arrays"]["recommendations.npz:items"]["shape"] == [N_USERS, TOP_N]
    assert recorded["personalised_users"] == N_USERS - 1
    assert recorded["model_type"] == "als" and recorded["format"] == 2


def test_precomputed_recommendations_match_implicit_and_skip_training_items() -> None:
    train, model = tiny_shop()
    served = model_from_factors(model.user_factors, model.item_factors, threads=1)
    recs, scores = top_k_unseen(served, train, np.arange(N_USERS), TOP_N)
    seen = train.toarray() > 0
    for user in np.flatnonzero(np.diff(train.indptr) > 0):  # no history: all scores tie
        ids, expected_scores = model.recommend(user, train[user], N=TOP_N)
        valid = expected_scores > np.finfo(np.float32).min
        n_valid = int(valid.sum())
        assert recs[user, :n_valid].tolist() == ids[valid].tolist()
        np.testing.assert_allclose(scores[user, :n_valid], expected_scores[valid], rtol=1e-5)
        assert (recs[user, n_valid:] == -1).all()
        assert np.isnan(scores[user, n_valid:]).all()
        assert not seen[user, recs[user, :n_valid]].any()
    assert (recs[HEAVY_USER] >= 0).sum() == 4


def test_users_without_history_are_left_to_the_fallback(tmp_path: Path) -> None:
    train, model = tiny_shop()
    export_to(tmp_path / "bundle", train, model)
    with np.load(tmp_path / "bundle" / "recommendations.npz", allow_pickle=False) as data:
        assert not data["personalised"][EMPTY_USER]
        assert data["personalised"].sum() == N_USERS - 1
        assert (data["items"][EMPTY_USER] == -1).all()


def test_same_inputs_give_a_byte_identical_bundle(tmp_path: Path) -> None:
    train, model = tiny_shop()
    export_to(tmp_path / "a", train, model)
    export_to(tmp_path / "b", train, model)
    for name in ("ids.npz", "metadata.json", "model.npz", "recommendations.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# --------------------------------------------------------------------------- the stage CLI


def write_inputs(repo: Path, top_n: int = TOP_N) -> None:
    """A repository layout with every input the export stage declares in dvc.yaml."""
    train, model = tiny_shop()
    users, items = user_and_item_ids()
    save_csr(repo / "data/train.npz", train)
    save_ids(repo / "data/user_ids.csv", "USER_ID", users)
    save_ids(repo / "data/item_ids.csv", "ITEM_ID", items)
    rows = "".join(f"{item},9.99,cat{i % 4},style,desc,,N\n" for i, item in enumerate(items))
    (repo / "data/items.csv").write_text(
        "ITEM_ID,PRICE,CATEGORY_L1,CATEGORY_L2,PRODUCT_DESCRIPTION,GENDER,PROMOTED\n" + rows
    )
    AlsModel.from_factors(
        model.user_factors, model.item_factors, threads=1, regularization=0.05, alpha=10.0
    ).save(repo / "models/als.npz")
    write_json(repo / "metrics/metrics.json", {"map_at_k": 0.25, "users": 12})
    params = {
        "model": {"type": "als"},
        "als": {
            "factors": 8,
            "regularization": 0.05,
            "alpha": 10.0,
            "iterations": 3,
            "use_cg": True,
            "random_state": 0,
        },
        "export": {"top_n": top_n, "fallback_size": 15},
        "runtime": {"threads": 1},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def run_export(repo: Path) -> subprocess.CompletedProcess[str]:
    return run_module("stages.export", cwd=repo)


@pytest.fixture(scope="module")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("exported")
    write_inputs(repo)
    assert run_export(repo).returncode == 0
    return repo


def test_stage_writes_the_bundle_with_metadata(exported_repo: Path, tmp_path: Path) -> None:
    meta = json.loads((exported_repo / "models/bundle/metadata.json").read_text())
    assert meta["metrics"] == {"map_at_k": 0.25, "users": 12}
    assert meta["params"]["export"] == {"top_n": TOP_N, "fallback_size": 15}
    assert meta["params"]["als"]["factors"] == 8
    assert set(meta["inputs_md5"]) == {"data/train.npz", "models/als.npz"}
    assert {"implicit", "numpy", "scipy"} <= set(meta["platform"]["libraries"])
    assert meta["platform"]["machine"] and meta["platform"]["blas"]
    # A second run from the same inputs (in another directory) gives the same bytes.
    repo = tmp_path / "again"
    shutil.copytree(exported_repo, repo)
    shutil.rmtree(repo / "models/bundle")
    assert run_export(repo).returncode == 0
    for name in ("ids.npz", "metadata.json", "model.npz", "recommendations.npz"):
        produced = (repo / "models/bundle" / name).read_bytes()
        assert produced == (exported_repo / "models/bundle" / name).read_bytes()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda repo: write_inputs(repo, top_n=0), "export.top_n = 0"),
        (lambda repo: (repo / "metrics/metrics.json").write_text("{"), "metrics.json"),
        (
            lambda repo: (repo / "data/items.csv").write_text("SKU,CATEGORY_L1\nx,y\n"),
            "missing column ITEM_ID",
        ),
        (
            lambda repo: AlsModel.from_factors(
                np.ones((3, 8)), np.ones((N_ITEMS, 8)), threads=1
            ).save(repo / "models/als.npz"),
            "user_factors has shape",
        ),
    ],
)
def test_bad_input_is_one_line_and_keeps_the_previous_bundle(
    exported_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    breakage,
    message: str,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    before = (repo / "models/bundle/recommendations.npz").read_bytes()
    breakage(repo)
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(export_main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert (repo / "models/bundle/recommendations.npz").read_bytes() == before


def test_cli_error_has_no_traceback(exported_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    (repo / "data/train.npz").write_bytes(b"not a zip")
    proc = run_export(repo)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data/train.npz") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_precompute_at_default_scale_is_fast() -> None:
    """~95k users x 2.5k items x 100 factors: the recommendation step of export."""
    rng = np.random.default_rng(0)
    n_users, n_items = 95_000, 2_465
    per_user = rng.integers(1, 8, n_users)
    rows = np.repeat(np.arange(n_users), per_user)
    train = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, rng.integers(0, n_items, rows.size))),
        shape=(n_users, n_items),
    )
    users = rng.standard_normal((n_users, 100), dtype=np.float32)
    items = rng.standard_normal((n_items, 100), dtype=np.float32)
    model = model_from_factors(users, items, threads=0)
    start = time.perf_counter()
    recs, _ = top_k_unseen(model, train, np.arange(n_users), 20)
    elapsed = time.perf_counter() - start
    assert recs.shape == (n_users, 20)
    assert elapsed < 5.0, f"precompute took {elapsed:.1f} s"
