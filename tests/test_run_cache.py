"""DVC's run-cache through the real CLI: a combination of params seen before is restored,
not recomputed (no stage output is `persist`, which would turn the run-cache off)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_repo_copy, run, set_params

pytestmark = pytest.mark.dvc

MODEL_STAGES = ("train", "evaluate", "export")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def lock_outs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def ran(output: str) -> set[str]:
    return {s for s in MODEL_STAGES if f"Running stage '{s}'" in output}


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy reproduced with als.factors=8 (A), its results committed."""
    repo = make_repo_copy(tmp_path_factory.mktemp("runcache") / "repo")
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "A"], repo)
    return repo


def test_a_b_a_experiment_restores_from_the_run_cache(committed: Path) -> None:
    repo = committed
    model_a = md5(repo / "models/als.npz")
    b = run(["dvc", "exp", "run", "-S", "als.factors=12"], repo)
    assert ran(b.stdout) == set(MODEL_STAGES), b.stdout
    a = run(["dvc", "exp", "run", "-S", "als.factors=8"], repo)
    assert not ran(a.stdout), a.stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in a.stdout
    assert md5(repo / "models/als.npz") == model_a


def test_checkout_of_an_older_commit_restores_instead_of_recomputing(committed: Path) -> None:
    repo = committed
    run(["git", "reset", "-q", "--hard"], repo)
    run(["dvc", "checkout", "-q"], repo)
    outs_a = lock_outs(repo)
    set_params(repo, {"als": {"factors": 10}})
    run(["dvc", "repro"], repo)
    run(["git", "commit", "-qam", "B"], repo)
    assert lock_outs(repo)["models/als.npz"] != outs_a["models/als.npz"]

    run(["git", "checkout", "-q", "HEAD~1"], repo)
    again = run(["dvc", "repro"], repo)
    assert not ran(again.stdout), again.stdout
    assert lock_outs(repo) == outs_a
    assert md5(repo / "models/als.npz") == outs_a["models/als.npz"]
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    run(["git", "checkout", "-q", "main"], repo)


def test_failed_stage_leaves_no_outputs_and_checkout_restores_them(tmp_path: Path) -> None:
    """Without persist, DVC removes a stage's outputs before running it; a failing stage
    writes nothing, so no stale or mixed files look valid; `dvc checkout` brings back the
    last good ones and git the metrics."""
    repo = make_repo_copy(tmp_path / "repo")
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "good"], repo)
    good = md5(repo / "models/als.npz")
    set_params(repo, {"als": {"factors": 0}})
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert "als.factors = 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (repo / "models/als.npz").exists()
    assert not list((repo / "models").glob(".als.npz.*")), "temp file left behind"
    run(["git", "checkout", "--", "params.yaml", "metrics"], repo)
    run(["dvc", "checkout"], repo)
    assert md5(repo / "models/als.npz") == good
    assert "up to date" in run(["dvc", "status"], repo).stdout
