"""DVC's run-cache through the real CLI: a combination of params seen before is restored,
not recomputed (no stage output is `persist`, which would turn the run-cache off)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import lock_outs, run, set_params

pytestmark = pytest.mark.dvc

MODEL_STAGES = ("train", "evaluate", "export")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def ran(output: str) -> set[str]:
    return {s for s in MODEL_STAGES if f"Running stage '{s}'" in output}


def test_a_b_a_experiment_restores_from_the_run_cache(reproduced_copy: Path) -> None:
    """A: the committed als.factors=8; B: 12; A again comes from the run-cache."""
    repo = reproduced_copy
    model_a = md5(repo / "models/als.npz")
    b = run(["dvc", "exp", "run", "-S", "als.factors=12"], repo)
    assert ran(b.stdout) == set(MODEL_STAGES), b.stdout
    a = run(["dvc", "exp", "run", "-S", "als.factors=8"], repo)
    assert not ran(a.stdout), a.stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in a.stdout
    assert md5(repo / "models/als.npz") == model_a


def test_checkout_of_an_older_commit_restores_instead_of_recomputing(
    reproduced_copy: Path,
) -> None:
    repo = reproduced_copy
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
