"""The GitHub Actions workflows: valid for actionlint, and wired the way docs/s3-and-ci.md says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def find_actionlint() -> str | None:
    """`actionlint` on PATH or next to this interpreter (a venv that is not activated)."""
    beside = Path(sys.executable).parent / "actionlint"
    return shutil.which("actionlint") or (str(beside) if os.access(beside, os.X_OK) else None)


ACTIONLINT = find_actionlint()
needs_actionlint = pytest.mark.skipif(
    ACTIONLINT is None,
    reason="actionlint is not installed (pip install -r requirements.txt provides it)",
)


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT is not None
    return subprocess.run(
        [ACTIONLINT, "-no-color", *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step of every job, or of one job when given `{"jobs": {name: job}}`."""
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_using(workflow: dict[str, Any], action: str) -> dict[str, Any]:
    found = [s for s in steps(workflow) if s.get("uses", "").startswith(f"{action}@")]
    assert found, f"no step uses {action}"
    return found[0]


def step_running(workflow: dict[str, Any], command: str) -> dict[str, Any]:
    found = [s for s in steps(workflow) if command in s.get("run", "")]
    assert found, f"no step runs {command!r}"
    return found[0]


@needs_actionlint
def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"pr.yml", "main.yml"}
    proc = actionlint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_actionlint
def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  report:\n"
        "    runs-on: ubuntu-latest\n"
        "    needs: no-such-job\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          fetch-dept: 0\n"
    )
    proc = actionlint(bad)
    assert proc.returncode != 0
    assert "no-such-job" in proc.stdout
    assert "fetch-dept" in proc.stdout


SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def runs(step: dict[str, Any], command: str) -> bool:
    """True when the step's script runs command (messages it echoes do not count)."""
    lines = step.get("run", "").splitlines()
    return any(command in ln for ln in lines if not ln.strip().startswith("echo"))


def job_running(workflow: dict[str, Any], command: str) -> dict[str, Any]:
    """The job with a step that runs command, whichever name it has."""
    found = [
        job for job in workflow["jobs"].values() if any(runs(s, command) for s in job["steps"])
    ]
    assert found, f"no job runs {command!r}"
    return found[0]


def order(job: dict[str, Any], *commands: str) -> list[int]:
    """Index of the first step running each command, in the job's step list."""
    found = [[i for i, s in enumerate(job["steps"]) if runs(s, c)] for c in commands]
    assert all(found), f"a step is missing: {dict(zip(commands, found, strict=True))}"
    return [indices[0] for indices in found]


def assert_secrets_only_in(workflow: dict[str, Any], commands: tuple[str, ...]) -> None:
    """AWS keys reach only the steps running commands, each gated on the non-secret flag."""
    for name, job in workflow["jobs"].items():
        assert not set(SECRET_KEYS) & set(job.get("env", {})), f"job {name} exposes AWS keys"
        for step in job["steps"]:
            run = step.get("run", "")
            exposed = set(SECRET_KEYS) & set(step.get("env", {}))
            if any(runs(step, command) for command in commands):
                assert exposed == set(SECRET_KEYS), f"{run!r} lacks the AWS key pair"
                assert step.get("if") == "env.HAS_AWS == 'true'", run
                assert "secrets.AWS_ACCESS_KEY_ID" in job["env"]["HAS_AWS"]
            else:
                assert not exposed, f"step {step.get('name', run)!r} gets AWS keys"
    assert "secrets." not in yaml.safe_dump(workflow.get("env", {}))


def test_pr_workflow_reproduces_checks_and_comments() -> None:
    pr = load("pr.yml")
    assert "pull_request" in pr["on"]
    assert pr["permissions"] == {"contents": "read"}
    assert pr["concurrency"]["cancel-in-progress"] is True
    step_running(pr, "make test")
    job = job_running(pr, "dvc repro")
    # Tests first, then the pipeline is reproduced (as docs/s3-and-ci.md says).
    assert job.get("needs") in ("test", ["test"])
    assert job_running(pr, "make test") is pr["jobs"]["test"]
    # Only the reporting job may write to the pull request.
    assert job.get("permissions") == {"contents": "read", "pull-requests": "write"}
    others = [j for j in pr["jobs"].values() if j is not job]
    assert all("pull-requests" not in j.get("permissions", {}) for j in others)
    report = {"jobs": {"report": job}}
    assert step_using(report, "actions/checkout")["with"]["fetch-depth"] == 0
    python = step_using(report, "actions/setup-python")["with"]
    assert (python["python-version"], python["cache"]) == ("3.11", "pip")
    assert python["cache-dependency-path"] == "requirements.txt"
    step_using(report, "iterative/setup-cml")
    assert_secrets_only_in(pr, ("dvc pull",))
    pull, repro, built, comment, check = order(
        job,
        "dvc pull",
        "dvc repro",
        "recsys report --base",
        "cml comment update",
        "recsys check-repro --rev HEAD",
    )
    # The comment goes up even when the committed results turn out stale.
    assert pull < repro < built < comment < check


def test_main_workflow_checks_then_pushes_only_with_credentials() -> None:
    main = load("main.yml")
    assert main["on"]["push"]["branches"] == ["main"]
    assert main["permissions"] == {"contents": "read"}
    assert main["concurrency"]["cancel-in-progress"] is False
    step_running(main, "make test")
    job = job_running(main, "dvc repro")
    assert job.get("needs") in ("test", ["test"])
    assert_secrets_only_in(main, ("dvc pull", "dvc push"))
    pull, repro, check, push = order(
        job, "dvc pull", "dvc repro", "recsys check-repro --rev HEAD", "dvc push"
    )
    # Stale committed results stop the run before anything reaches the remote
    # (tests/test_check_repro.py checks the command's exit codes and messages).
    assert pull < repro < check < push
    # The slow tests run on main too.
    job_running(main, "make test-all")


@pytest.mark.parametrize("name", ["pr.yml", "main.yml"])
def test_every_test_job_sets_up_java_17_before_the_tests(name: str) -> None:
    """The suite starts a Spark standalone cluster, and `make test` stops without Java.
    Every job running `make test` or `make test-all` (the substring matches both) counts."""
    jobs = [j for j in load(name)["jobs"].values() if any(runs(s, "make test") for s in j["steps"])]
    assert jobs, f"{name}: no job runs the tests"
    for job in jobs:
        java = [i for i, s in enumerate(job["steps"])
                if str(s.get("uses", "")).startswith("actions/setup-java@")]  # fmt: skip
        tests = [i for i, s in enumerate(job["steps"]) if runs(s, "make test")]
        assert java and java[0] < tests[0], f"{name}: no Java before the tests"
        assert str(job["steps"][java[0]]["with"]["java-version"]) == "17"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_makefile_target_parses() -> None:
    """The README's commands go through make: a broken Makefile breaks all of them."""
    targets = ["setup", "repro", "test", "test-all", "lint", "format", "bench"]
    targets += ["bench-families", "bench-service", "fidelity", "serve", "clean-venv"]
    targets += ["docs", "docs-build"]
    for target in targets:
        proc = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (target, proc.stderr)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_stops_in_one_line_without_java(tmp_path: Path) -> None:
    """Without Java on PATH the suite's Spark cluster cannot start: `make test` says so and
    how to install it, before installing anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(
        [shutil.which("make"), "-s", "test"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: pyspark needs Java 17 or 21 (found: none)")
    assert "apt-get install -y openjdk-17-jre-headless" in lines[0]
    assert "pip" not in proc.stdout + proc.stderr  # nothing was installed
