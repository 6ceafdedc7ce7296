"""Every model family through the real `dvc repro` on the small reproduced copy, one after
another in one copy (the data stages run once), then back to ALS from the run-cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.families import FAMILIES
from recsys.io import md5sum
from tests.conftest import copy_reproduced, recsys, run, set_params

pytestmark = pytest.mark.dvc

# itemknn last: its bundle is the one the CLI tests below query
OTHERS = ["bpr", "lmf", "ease", "rp3beta", "popular", "itemknn"]
MODEL_STAGES = ("train", "evaluate", "export")


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def ran(output: str) -> set[str]:
    return {s for s in MODEL_STAGES if f"Running stage '{s}'" in output}


@pytest.fixture(scope="module")
def families(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict], dict]:
    repo = copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("families") / "repo")
    als_lock = lock(repo)
    runs: dict[str, dict] = {}
    for name in OTHERS:
        set_params(repo, {"model": {"type": name}})
        # export (the bundle) only for the last: the CLI tests query it; saves time
        proc = run(["dvc", "repro", *([] if name == OTHERS[-1] else ["evaluate"])], repo)
        runs[name] = {
            "output": proc.stdout,
            "metrics": json.loads((repo / "metrics/metrics.json").read_text()),
            "lock": lock(repo),
        }
    return repo, runs, als_lock


def test_every_family_runs_only_the_model_stages(families) -> None:
    _, runs, _ = families
    # spark_als runs through dvc in tests/test_spark_cluster.py (on a standalone cluster),
    # rerank in tests/test_rerank.py
    assert set(OTHERS) | {"als", "spark_als", "rerank"} == set(FAMILIES)
    for name, result in runs.items():
        expected = set(MODEL_STAGES) - ({"export"} if name != OTHERS[-1] else set())
        assert ran(result["output"]) == expected, (name, result["output"])
        assert "Running stage 'generate'" not in result["output"]
        assert f"train: {name} on " in result["output"]
        train = result["lock"]["train"]
        assert f"models/{name}.npz" in [out["path"] for out in train["outs"]]
        assert "models/als.npz" not in [out["path"] for out in train["outs"]]
        assert f"models/{name}.npz" in [d["path"] for d in result["lock"]["evaluate"]["deps"]]
        assert train["params"]["params.yaml"]["model"] == {"type": name}
        # the active family's section only: an ALS knob is not a dependency of EASE
        assert "als" not in train["params"]["params.yaml"]


def test_every_family_reports_metrics_with_error_bars(families) -> None:
    repo, runs, _ = families
    for name, result in runs.items():
        m = result["metrics"]
        assert 0 <= m["map_at_k_ci_low"] <= m["map_at_k"] <= m["map_at_k_ci_high"] <= 1, name
        assert m["ndcg_at_k_ci_low"] <= m["ndcg_at_k"] <= m["ndcg_at_k_ci_high"], name
        versus = m["vs_baseline"]
        diff = m["map_at_k"] - m["baseline"]["map_at_k"]
        assert versus["map_at_k"] == pytest.approx(diff, abs=2e-6), name
        assert versus["map_at_k_ci_low"] <= versus["map_at_k"] <= versus["map_at_k_ci_high"]
    assert runs["popular"]["metrics"]["vs_baseline"]["map_at_k"] == 0
    for name, result in runs.items():  # the verdict follows the interval, whichever way
        versus = result["metrics"]["vs_baseline"]
        if name != "popular":
            assert versus["map_at_k_ci_low"] < versus["map_at_k_ci_high"], name
        if versus["map_at_k_ci_low"] > 0 or versus["map_at_k_ci_high"] < 0:
            assert (versus["map_at_k_ci_low"] > 0) == (versus["map_at_k"] > 0), name
    with np.load(repo / "data/per_user.npz", allow_pickle=False) as per_user:
        assert per_user["user"].size == runs["itemknn"]["metrics"]["users"]
        expected = runs["itemknn"]["metrics"]["map_at_k"]
        assert per_user["ap"].mean() == pytest.approx(expected, abs=1e-6)
        assert str(per_user["test_md5"]) == md5sum(repo / "data/test.npz")
    assert "/per_user.npz" in (repo / "data/.gitignore").read_text()


def recommend(repo: Path, *args: str) -> dict:
    proc = recsys("recommend", *args, "-n", "5", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_cli_serves_a_non_als_bundle(families) -> None:
    repo, _, _ = families
    meta = json.loads((repo / "models/bundle/metadata.json").read_text())
    assert meta["model_type"] == "itemknn" and meta["params"]["model"] == {"type": "itemknn"}
    assert set(meta["params"]) == {"model", "itemknn", "export", "coldstart"}
    user = (repo / "data/user_ids.csv").read_text().splitlines()[1]
    items = (repo / "data/item_ids.csv").read_text().splitlines()[1:4]
    known = recommend(repo, user)
    assert known["source"] == "personalised" and len(known["scores"]) == len(known["items"])
    stranger = recommend(repo, "no-such-user")
    assert stranger["source"] == "fallback" and "scores" not in stranger
    session = recommend(repo, "--items", *items, "unknown-item")
    assert session["source"] == "personalised" and session["unknown_items"] == ["unknown-item"]
    assert not set(session["items"]) & set(items)


def test_back_to_als_comes_from_the_run_cache(families) -> None:
    repo, _, als_lock = families
    # a knob of an inactive family changes nothing
    set_params(repo, {"model": {"type": "als"}, "ease": {"l2": 7.5}})
    proc = run(["dvc", "repro"], repo)
    assert not ran(proc.stdout), proc.stdout
    assert "Stage 'train' is cached - skipping run" in proc.stdout
    assert lock(repo)["train"]["outs"] == als_lock["train"]["outs"]
    assert lock(repo)["export"]["outs"] == als_lock["export"]["outs"]
    items = (repo / "data/item_ids.csv").read_text().splitlines()[1:4]
    session = recommend(repo, "--items", *items)  # ALS folds the session in
    assert session["source"] == "personalised" and len(session["items"]) == 5
    similar = recommend(repo, "--similar", items[0])
    assert items[0] not in similar["items"] and len(similar["scores"]) == 5
