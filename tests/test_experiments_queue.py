"""Queued DVC experiments, as the docs tell them: the experiments recipe of the README and
docs/experiments.md runs here line by line, as written, with a bad value queued first; parallel
workers, only model stages re-run, failures isolated, then compare, apply and branch."""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path

import psutil
import pytest

from tests.documented import commands, is_the_experiments_recipe, run_block, runnable_blocks
from tests.helpers import ROOT, copy_reproduced, run

pytestmark = [pytest.mark.dvc, pytest.mark.long]

RECIPE = "docs/experiments.md"


def queue_workers(repo: Path) -> list[psutil.Process]:
    """The processes serving `repo`'s queue: `dvc queue start` leaves a daemon (a fork that
    keeps its command line) which runs the `dvc exp queue-worker` and waits for it."""
    workers = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["cwd"] == str(repo.resolve()) and (
            "queue-worker" in cmdline or {"queue", "start"} <= set(cmdline)
        ):
            workers.append(proc)
    return workers


def running_an_experiment(workers: list[psutil.Process]) -> bool:
    """Whether a queue worker has a child: the `dvc exp exec-run` of the experiment it runs."""
    try:
        return any(w.children() for w in workers if "queue-worker" in w.cmdline())
    except psutil.NoSuchProcess:
        return True  # a worker is exiting: look again


def wait_for_queue(repo: Path, timeout: float = 420) -> str:
    """Wait until `dvc queue status` shows nothing queued or running, as a reader does, then
    stop the idle workers (they would wait 10 s for more work) and return that status.

    Each `dvc queue status` starts DVC (about 0.4 CPU-s), so it is asked only while no
    worker runs an experiment; watching the workers' processes costs nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running_an_experiment(queue_workers(repo)):
            status = run(["dvc", "queue", "status"], repo).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(1.5)
        time.sleep(0.2)
    else:
        run(["dvc", "queue", "kill", "--all"], repo, check=False)
        pytest.fail(f"the queue did not finish in {timeout} s")
    run(["dvc", "queue", "stop"], repo)
    _, alive = psutil.wait_procs(queue_workers(repo), timeout=60)
    assert not alive, f"queue workers still running after `dvc queue stop`: {alive}"
    return status


def split_at_the_queue_start(block: str) -> tuple[str, str]:
    """The recipe up to and including `dvc queue start`, and the rest."""
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dvc queue start"))
    return "\n".join(lines[: start + 1]), "\n".join(lines[start + 1 :])


@pytest.fixture(scope="module")
def queued(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, dict[str, str]]:
    """(repo, the queue's final status, documented command -> what it printed)."""
    repo = copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("queue") / "repo")
    # runtime.threads is declared by no stage: the reproduced results stay valid
    (repo / "params.yaml").write_text(
        (repo / "params.yaml").read_text().replace("threads: 1", "threads: 0")
    )
    run(["git", "commit", "-qam", "automatic threads"], repo)
    # a value the params check refuses, in the same queue as the documented runs
    run(["dvc", "exp", "run", "--queue", "--name", "bad", "-S", "als.factors=0"], repo)
    [recipe] = [b for b in runnable_blocks(ROOT / RECIPE) if is_the_experiments_recipe(b)]
    until_start, rest = split_at_the_queue_start(recipe)
    env_before = run(["git", "status", "--porcelain"], repo).stdout
    outputs = run_block(until_start, repo, RECIPE)
    status = wait_for_queue(repo)  # as a reader does with `dvc queue status`
    assert run(["git", "status", "--porcelain"], repo).stdout == env_before
    outputs |= run_block(rest, repo, RECIPE)
    return repo, status, outputs


def test_the_documented_recipe_runs_as_written(queued) -> None:
    _, _, outputs = queued
    [recipe] = [b for b in runnable_blocks(ROOT / RECIPE) if is_the_experiments_recipe(b)]
    assert [shlex.join(argv) for argv in commands(recipe)] == list(outputs)
    shows = [out for cmd, out in outputs.items() if cmd.startswith("dvc exp show")]
    assert shows and all("model.type" in out for out in shows)
    assert any("| ease " in out for out in shows), "the EASE run is told apart by model.type"
    compared = next(out for cmd, out in outputs.items() if cmd.startswith("recsys compare"))
    assert compared.startswith("## DVC report: `HEAD` -> `wider`")


def test_queued_sweep_reruns_only_model_stages_with_shared_cores(queued) -> None:
    repo = queued[0]
    expected_threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for name in ["wider", "ease"]:
        logs = run(["dvc", "queue", "logs", name], repo).stdout
        assert "Running stage 'train'" in logs
        assert "Running stage 'generate'" not in logs
        assert "Running stage 'mask'" not in logs
        assert f"threads={expected_threads}:" in logs
    assert "train: ease on " in run(["dvc", "queue", "logs", "ease"], repo).stdout


def test_a_queued_family_switch_keeps_its_own_model_file(queued) -> None:
    repo, status, _ = queued
    assert re.search(r"ease\s.*Success", status), status
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    exps = {e.get("name"): e for b in rows for r in b.get("experiments") or [] for e in r["revs"]}
    data = exps["ease"]["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["type"] == "ease"
    assert "models/ease.npz" in data["deps"] and "models/als.npz" not in data["deps"]
    assert "models/als.npz" in exps["wider"]["data"]["deps"]
    assert exps["wider"]["data"]["params"]["params.yaml"]["data"]["als"]["factors"] == 128


def test_exp_show_lists_metrics_and_sorts_by_map(queued) -> None:
    repo = queued[0]
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = {
        exp.get("name"): exp
        for baseline in rows
        for exp in [baseline, *[e for r in baseline.get("experiments") or [] for e in r["revs"]]]
    }
    assert {"wider", "ease"} <= set(names)
    table = run(
        ["dvc", "exp", "show", "--csv", "--sort-by", "map_at_k", "--sort-order", "desc"], repo
    ).stdout
    header = table.splitlines()[0].split(",")
    assert "map_at_k" in header and "als.factors" in header


def test_failed_experiment_is_isolated_with_a_readable_reason(queued) -> None:
    repo, status, _ = queued
    assert re.search(r"bad\s.*Failed", status), status
    assert re.search(r"wider\s.*Success", status) and re.search(r"ease\s.*Success", status)
    logs = run(["dvc", "queue", "logs", "bad"], repo).stdout
    assert "error: params.yaml: als.factors = 0" in logs
    # the workspace kept its own params (checked by git status in the fixture) until the
    # recipe's `dvc exp apply wider` brought the winner's
    assert "factors: 8" in run(["git", "show", "HEAD:params.yaml"], repo).stdout
    assert "factors: 128" in (repo / "params.yaml").read_text()
