"""End-to-end: the real `dvc` CLI on a small-params copy of this repository."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from tests.helpers import copy_reproduced, lock_outs, make_repo_copy, run, set_params

pytestmark = pytest.mark.dvc

STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]
MODEL_STAGES = {"train", "evaluate", "export"}


def ran_stages(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reproduced(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    repo, output = reproduced_template
    return copy_reproduced(repo, tmp_path_factory.mktemp("pipeline") / "repo"), output


def test_repro_runs_every_stage_and_writes_the_contract_files(
    reproduced: tuple[Path, str],
) -> None:
    repo, output = reproduced
    assert ran_stages(output) == set(STAGES)
    header = (repo / "data/interactions.csv").read_text().splitlines()[0]
    assert header == "ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT"
    train = sp.load_npz(repo / "data/train.npz")
    test = sp.load_npz(repo / "data/test.npz")
    full = sp.load_npz(repo / "data/matrix.npz")
    assert train.shape == test.shape == full.shape
    assert train.nnz + test.nnz == full.nnz and train.multiply(test).nnz == 0
    with np.load(repo / "models/als.npz", allow_pickle=False) as model:
        assert model["user_factors"].dtype == np.float32
        assert model["user_factors"].shape == (full.shape[0], 8)
        assert model["item_factors"].shape == (full.shape[1], 8)
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    for key in ["map_at_k", "precision_at_k", "recall_at_k", "ndcg_at_k", "hit_rate_at_k"]:
        assert 0.0 <= metrics[key] <= 1.0
        assert 0.0 <= metrics["baseline"][key] <= 1.0
    assert metrics["users"] == int(np.count_nonzero(np.diff(test.tocsr().indptr)))
    assert (repo / "models/bundle/metadata.json").is_file()


def test_second_repro_skips_everything(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    proc = run(["dvc", "repro"], repo)
    assert ran_stages(proc.stdout) == set()
    assert run(["dvc", "status"], repo).stdout.strip().endswith("up to date.")


def test_same_seed_gives_the_same_lock_hashes(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    repo, _ = reproduced
    other = make_repo_copy(tmp_path / "again")
    run(["dvc", "repro"], other)
    assert lock_outs(other) == lock_outs(repo)
    assert md5(other / "metrics/metrics.json") == md5(repo / "metrics/metrics.json")


def test_changing_als_params_reruns_only_the_model_stages(
    reproduced: tuple[Path, str],
) -> None:
    repo, _ = reproduced
    proc = run(["dvc", "exp", "run", "-S", "als.factors=6"], repo)
    assert ran_stages(proc.stdout) == MODEL_STAGES
    with np.load(repo / "models/als.npz", allow_pickle=False) as model:
        assert model["item_factors"].shape[1] == 6
    run(["git", "checkout", "-q", "--", "."], repo)
    run(["dvc", "checkout", "-q"], repo)


def stage_outputs(repo: Path, stage: str) -> list[str]:
    """Every output path (outs and metrics, cached or not) dvc.yaml declares for `stage`."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    entries = [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def temp_leftovers(repo: Path) -> list[str]:
    """Hidden files or directories (the atomic writers' temp names) in the output folders."""
    return sorted(
        str(p.relative_to(repo))
        for folder in ("data", "models", "metrics")
        if (repo / folder).is_dir()
        for p in (repo / folder).rglob(".*")
        if p.name != ".gitignore"
    )


def tree_md5(root: Path, paths: list[str]) -> dict[str, str]:
    """relpath -> md5 of every file at or under `paths` (a directory output counts file by file)."""
    out = {}
    for path in paths:
        target = root / path
        files = sorted(target.rglob("*")) if target.is_dir() else [target]
        out.update({str(f.relative_to(root)): md5(f) for f in files if f.is_file()})
    return out


@pytest.mark.parametrize(
    ("section", "values", "stage", "message"),
    [
        ("generate", {"users": -3}, "generate", "generate.users = -3"),
        ("als", {"factors": 0}, "train", "als.factors = 0"),
        ("evaluate", {"k": -1}, "evaluate", "evaluate.k = -1"),
    ],
)
def test_bad_param_fails_in_one_line_and_checkout_restores_the_outputs(
    reproduced: tuple[Path, str], section: str, values: dict, stage: str, message: str
) -> None:
    """No `persist`: DVC deletes a stage's outputs before running it, so a failed stage leaves
    none (never a half-written or mixed set), and `dvc checkout` brings back the last good ones;
    outputs kept in git (`cache: false`) come back with `git checkout`."""
    repo, _ = reproduced
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", "last good run"], repo)
    outputs = sorted({p for s in STAGES for p in stage_outputs(repo, s)})
    before = tree_md5(repo, outputs)
    failed = set(tree_md5(repo, stage_outputs(repo, stage)))
    assert failed and failed <= set(before)
    original = (repo / "params.yaml").read_text()
    try:
        set_params(repo, {section: values})
        proc = run(["dvc", "repro"], repo, check=False)
    finally:
        (repo / "params.yaml").write_text(original)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr

    # The failed stage left none of its outputs and no temp file; every other output is
    # exactly the last good one (the stages before it were up to date, those after never ran).
    after = tree_md5(repo, outputs)
    assert set(before) - set(after) == failed
    assert after == {p: h for p, h in before.items() if p in after}
    assert [p for p in stage_outputs(repo, stage) if (repo / p).exists()] == []
    assert temp_leftovers(repo) == []

    run(["dvc", "checkout", "-q"], repo)
    run(["git", "checkout", "-q", "--", "metrics"], repo)
    assert tree_md5(repo, outputs) == before
    assert run(["dvc", "status"], repo).stdout.strip().endswith("up to date.")
