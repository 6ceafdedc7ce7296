"""What the tests share besides fixtures: a throw-away copy of this repository, and the real
`dvc` and `recsys` commands run in it as a user runs them (fixtures are in `conftest.py`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recsys.params import Section, update_params_file

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]

# What a clone needs to run the pipeline; outputs, dvc.lock and metrics are left behind so
# each test starts from nothing.
REPO_FILES = [
    "stages",
    "recsys",
    "events",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]

# Small enough for a 2-core CI machine, big enough for every stage to have real work.
SMALL_PARAMS: dict[str, dict] = {
    "generate": {"users": 1500, "interactions": 12000},
    "als": {"factors": 8, "iterations": 3},
    "evaluate": {"k": 10},
    "export": {"top_n": 10, "fallback_size": 20},
    "runtime": {"threads": 1},
}


def parse(from_section: Callable[[Section], T], name: str, values: dict[str, Any]) -> T:
    """Params section `name` holding `values`, parsed as `recsys.params.load` does it from
    params.yaml: `from_section` (a dataclass's), then unknown keys refused."""
    section = Section(name, values)
    parsed = from_section(section)
    section.check_unknown()
    return parsed


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, a git identity, no pager."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        GIT_AUTHOR_NAME="recsys-dvc tests",
        GIT_AUTHOR_EMAIL="tests@example.invalid",
        GIT_COMMITTER_NAME="recsys-dvc tests",
        GIT_COMMITTER_EMAIL="tests@example.invalid",
        DVC_NO_ANALYTICS="1",
        GIT_TERMINAL_PROMPT="0",
        PAGER="cat",
    )
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on an unexpected exit show what it printed."""
    proc = subprocess.run(
        args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}"
        )
    return proc


def run_module(
    module: str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` as DVC runs a stage, with this checkout's `stages` and `recsys`
    importable."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


RECSYS = str(Path(sys.executable).parent / "recsys")  # the console script `make setup` installs


def recsys(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`recsys ARGS...` as a user types it, in `cwd`; never raises on a non-zero exit."""
    return subprocess.run(
        [RECSYS, *args],
        cwd=cwd,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lock_outs(repo: Path, *stages: str) -> dict[str, str]:
    """Output path -> md5 recorded in the copy's dvc.lock, for `stages` (default: all)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in stages or lock for o in lock[s].get("outs", [])}


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    """Merge `updates` (section -> {key: value}) into the copy's params.yaml."""
    update_params_file(repo / "params.yaml", updates)


def make_repo_copy(dest: Path, params: dict[str, dict] | None = None) -> Path:
    """Copy the project into `dest` as a fresh git repository with one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            # __pycache__ too (git ignores it): copy2 keeps the sources' times, so the stage
            # processes in the copy load the compiled modules instead of compiling them again
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
    set_params(dest, SMALL_PARAMS if params is None else params)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "initial"], dest)
    return dest


def copy_reproduced(template: Path, dest: Path) -> Path:
    """A copy of the reproduced repository (git history, DVC cache, outputs) at `dest`."""
    shutil.copytree(template, dest, symlinks=True)
    return dest
