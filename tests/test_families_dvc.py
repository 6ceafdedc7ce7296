"""Every model family through the real `dvc repro` on the small reproduced copy: one test
per family, each in its own copy (the data stages come from the template), so parallel
workers share the families; one of them goes back to ALS from the run-cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.families import FAMILIES
from recsys.io import md5sum
from tests.helpers import copy_reproduced, recsys, run, set_params

pytestmark = pytest.mark.dvc

OTHERS = ["bpr", "lmf", "ease", "rp3beta", "popular", "itemknn"]
WITH_BUNDLE = "itemknn"  # the one whose bundle the CLI is asked about (export costs time)
MODEL_STAGES = ("train", "evaluate", "export")


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def ran(output: str) -> set[str]:
    return {s for s in MODEL_STAGES if f"Running stage '{s}'" in output}


def test_every_family_but_als_and_spark_als_is_run_here() -> None:
    # spark_als runs through dvc in tests/test_spark_cluster.py (on a standalone cluster),
    # rerank in tests/test_rerank.py (slow)
    assert set(OTHERS) | {"als", "spark_als", "rerank"} == set(FAMILIES)


def switch(template: Path, dest: Path, name: str) -> tuple[Path, dict, dict, str]:
    """A copy of the template switched to family `name` by `dvc repro`: (repo, ALS lock
    before, metrics after, repro output)."""
    repo = copy_reproduced(template, dest / "repo")
    als_lock = lock(repo)
    set_params(repo, {"model": {"type": name}})
    proc = run(["dvc", "repro", *([] if name == WITH_BUNDLE else ["evaluate"])], repo)
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    return repo, als_lock, metrics, proc.stdout


def check_only_model_stages_ran(repo: Path, name: str, output: str) -> None:
    expected = set(MODEL_STAGES) - ({"export"} if name != WITH_BUNDLE else set())
    assert ran(output) == expected, (name, output)
    assert "Running stage 'generate'" not in output
    assert f"train: {name} on " in output
    stages = lock(repo)
    train = stages["train"]
    assert f"models/{name}.npz" in [out["path"] for out in train["outs"]]
    assert "models/als.npz" not in [out["path"] for out in train["outs"]]
    assert f"models/{name}.npz" in [d["path"] for d in stages["evaluate"]["deps"]]
    assert train["params"]["params.yaml"]["model"] == {"type": name}
    # the active family's section only: an ALS knob is not a dependency of EASE
    assert "als" not in train["params"]["params.yaml"]


def check_metrics_have_error_bars(name: str, m: dict) -> None:
    assert 0 <= m["map_at_k_ci_low"] <= m["map_at_k"] <= m["map_at_k_ci_high"] <= 1, name
    assert m["ndcg_at_k_ci_low"] <= m["ndcg_at_k"] <= m["ndcg_at_k_ci_high"], name
    versus = m["vs_baseline"]
    diff = m["map_at_k"] - m["baseline"]["map_at_k"]
    assert versus["map_at_k"] == pytest.approx(diff, abs=2e-6), name
    assert versus["map_at_k_ci_low"] <= versus["map_at_k"] <= versus["map_at_k_ci_high"]
    if name == "popular":  # the baseline itself
        assert versus["map_at_k"] == 0
    else:
        assert versus["map_at_k_ci_low"] < versus["map_at_k_ci_high"], name
    if versus["map_at_k_ci_low"] > 0 or versus["map_at_k_ci_high"] < 0:
        # the verdict follows the interval, whichever way
        assert (versus["map_at_k_ci_low"] > 0) == (versus["map_at_k"] > 0), name


@pytest.mark.parametrize("name", [n for n in OTHERS if n not in (WITH_BUNDLE, "ease")])
def test_a_family_runs_only_the_model_stages_with_error_bars(
    name: str, reproduced_template: tuple[Path, str], tmp_path: Path
) -> None:
    repo, _, metrics, output = switch(reproduced_template[0], tmp_path, name)
    check_only_model_stages_ran(repo, name, output)
    check_metrics_have_error_bars(name, metrics)


def recommend(repo: Path, *args: str) -> dict:
    proc = recsys("recommend", *args, "-n", "5", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def itemknn(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict, dict, str]:
    return switch(reproduced_template[0], tmp_path_factory.mktemp("itemknn"), WITH_BUNDLE)


def test_itemknn_runs_every_model_stage_and_scores_each_user(itemknn) -> None:
    repo, _, metrics, output = itemknn
    check_only_model_stages_ran(repo, WITH_BUNDLE, output)
    check_metrics_have_error_bars(WITH_BUNDLE, metrics)
    with np.load(repo / "data/per_user.npz", allow_pickle=False) as per_user:
        assert per_user["user"].size == metrics["users"]
        assert per_user["ap"].mean() == pytest.approx(metrics["map_at_k"], abs=1e-6)
        assert str(per_user["test_md5"]) == md5sum(repo / "data/test.npz")
    assert "/per_user.npz" in (repo / "data/.gitignore").read_text()


def test_the_cli_serves_a_non_als_bundle(itemknn) -> None:
    repo = itemknn[0]
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


def test_ease_then_back_to_als_comes_from_the_run_cache(
    reproduced_template: tuple[Path, str], tmp_path: Path
) -> None:
    repo, als_lock, metrics, output = switch(reproduced_template[0], tmp_path, "ease")
    check_only_model_stages_ran(repo, "ease", output)
    check_metrics_have_error_bars("ease", metrics)
    run(["dvc", "repro", "export"], repo)  # EASE's bundle, so that ALS's must come back
    assert lock(repo)["export"]["outs"] != als_lock["export"]["outs"]
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
