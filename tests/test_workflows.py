"""The GitHub Actions workflows: valid for actionlint, and wired the way the README says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

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


def test_pr_workflow_reproduces_checks_and_comments() -> None:
    pr = load("pr.yml")
    assert "pull_request" in pr["on"]
    assert pr["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert pr["concurrency"]["cancel-in-progress"] is True
    step_running(pr, "make test")
    # The job that reproduces and reports, whichever name it has.
    job = next(
        j for j in pr["jobs"].values() if any("dvc repro" in s.get("run", "") for s in j["steps"])
    )
    report = {"jobs": {"report": job}}
    assert step_using(report, "actions/checkout")["with"]["fetch-depth"] == 0
    python = step_using(report, "actions/setup-python")["with"]
    assert (python["python-version"], python["cache"]) == ("3.11", "pip")
    assert python["cache-dependency-path"] == "requirements.txt"
    step_using(report, "iterative/setup-cml")
    assert "AWS_ACCESS_KEY_ID" in step_running(report, "dvc pull")["if"]
    ordered = [s.get("run", "") for s in job["steps"]]
    repro = next(i for i, run in enumerate(ordered) if "dvc repro" in run)
    built = next(i for i, run in enumerate(ordered) if "scripts/pr_report.py --base" in run)
    comment = next(i for i, run in enumerate(ordered) if "cml comment update" in run)
    check = next(i for i, run in enumerate(ordered) if "git diff --exit-code" in run)
    # The comment goes up even when the committed results turn out stale.
    assert repro < built < comment < check


def test_main_workflow_pushes_only_with_credentials() -> None:
    main = load("main.yml")
    assert main["on"]["push"]["branches"] == ["main"]
    assert main["permissions"] == {"contents": "read"}
    step_running(main, "make test")
    step_running(main, "dvc repro")
    assert "AWS_ACCESS_KEY_ID" in step_running(main, "dvc push")["if"]
