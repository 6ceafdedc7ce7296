"""Queued DVC experiments: parallel workers, only model stages re-run, failures isolated."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import copy_reproduced, run

pytestmark = pytest.mark.dvc


def wait_for_queue(repo: Path, timeout: float = 420) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last table."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            run(["dvc", "queue", "kill", "--all"], repo, check=False)
            raise AssertionError(f"queue did not finish in {timeout}s:\n{status}")
        time.sleep(2)


@pytest.fixture(scope="module")
def queued(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    repo = copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("queue") / "repo")
    # runtime.threads is declared by no stage: the reproduced results stay valid
    (repo / "params.yaml").write_text(
        (repo / "params.yaml").read_text().replace("threads: 1", "threads: 0")
    )
    run(["git", "commit", "-qam", "automatic threads"], repo)
    sweep = [
        ("f6", "als.factors=6"),
        ("f10", "als.factors=10"),
        ("bad", "als.factors=0"),
        ("ease", "model.type=ease"),  # another family: models/ease.npz, same queue
    ]
    for name, value in sweep:
        run(["dvc", "exp", "run", "--queue", "--name", name, "-S", value], repo)
    env_before = run(["git", "status", "--porcelain"], repo).stdout
    run(["dvc", "queue", "start", "-j", "2"], repo)
    status = wait_for_queue(repo)
    assert run(["git", "status", "--porcelain"], repo).stdout == env_before
    return repo, status


def test_queued_sweep_reruns_only_model_stages_with_shared_cores(
    queued: tuple[Path, str],
) -> None:
    repo, _ = queued
    expected_threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for name in ["f6", "f10", "ease"]:
        logs = run(["dvc", "queue", "logs", name], repo).stdout
        assert "Running stage 'train'" in logs
        assert "Running stage 'generate'" not in logs
        assert "Running stage 'mask'" not in logs
        assert f"threads={expected_threads}:" in logs
    assert "train: ease on " in run(["dvc", "queue", "logs", "ease"], repo).stdout


def test_a_queued_family_switch_keeps_its_own_model_file(queued: tuple[Path, str]) -> None:
    repo, status = queued
    assert re.search(r"ease\s.*Success", status), status
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    exps = {e.get("name"): e for b in rows for r in b.get("experiments") or [] for e in r["revs"]}
    data = exps["ease"]["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["type"] == "ease"
    assert "models/ease.npz" in data["deps"] and "models/als.npz" not in data["deps"]
    assert "models/als.npz" in exps["f6"]["data"]["deps"]


def test_exp_show_lists_metrics_and_sorts_by_map(queued: tuple[Path, str]) -> None:
    repo, _ = queued
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = {
        exp.get("name"): exp
        for baseline in rows
        for exp in [baseline, *[e for r in baseline.get("experiments") or [] for e in r["revs"]]]
    }
    assert {"f6", "f10"} <= set(names)
    table = run(
        ["dvc", "exp", "show", "--csv", "--sort-by", "map_at_k", "--sort-order", "desc"], repo
    ).stdout
    header = table.splitlines()[0].split(",")
    assert "map_at_k" in header and "als.factors" in header


def test_failed_experiment_is_isolated_with_a_readable_reason(queued: tuple[Path, str]) -> None:
    repo, status = queued
    assert re.search(r"bad\s.*Failed", status), status
    assert re.search(r"f6\s.*Success", status) and re.search(r"f10\s.*Success", status)
    logs = run(["dvc", "queue", "logs", "bad"], repo).stdout
    assert "error: params.yaml: als.factors = 0" in logs
    params = (repo / "params.yaml").read_text()
    assert "factors: 8" in params  # the workspace keeps its own params
