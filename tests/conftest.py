"""Shared fixtures: a throw-away copy of this repository driven by the real `dvc` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from filelock import FileLock

from recsys.params import Section, update_params_file

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]

# The Spark tests' JVMs (drivers, executors, a standalone master and workers) live for
# seconds: the optimising JIT compiler and the parallel collector's threads cost them more
# than they win. The C1 compiler alone and one GC thread cut the slow tests' CPU by a fifth
# and their wall time by a third (docs/testing.md); the bytes Spark writes do not depend on
# either. An explicit JDK_JAVA_OPTIONS, even empty, is kept.
os.environ.setdefault("JDK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")

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


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """For `make test` (pytest-xdist, `--dist loadgroup`): the tests of a module that share a
    module-scoped fixture go to one worker, so the fixture (a reproduced copy, a published
    remote, a queue run) is built once, not once per worker that picks up one of its tests;
    and the tests driving dvc start first, so that the slowest do not start last.

    pytest-xdist tells its scheduler about a group by appending `@group` to the test ids,
    which pytest 9.2 silently ignores (pytest-xdist#1386): every module fixture was then
    built on every worker. After xdist's own hook has run, a grouped test without the
    suffix is reported in the warnings summary: the run is still correct, only slower.
    """
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures else []
        if any(d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("dvc") is None)
    result = yield
    if os.environ.get("PYTEST_XDIST_WORKER") and config.getvalue("loadgroup"):
        lost = [
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        ]
        if lost:
            warnings.warn(
                pytest.PytestWarning(
                    f"--dist loadgroup is not grouping ({lost[0]} has no @group suffix), so "
                    "module fixtures are built on every worker: pytest-xdist does not support "
                    "this pytest; install the versions in requirements.txt"
                ),
                stacklevel=1,
            )
    return result


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A small-params copy of the project, committed, with no outputs yet."""
    return make_repo_copy(tmp_path / "repo")


@pytest.fixture
def dvc(repo_copy: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `dvc ARGS...` in the repo copy."""

    def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["dvc", *args], repo_copy, check=check)

    return _dvc


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small copy reproduced by `dvc repro` and committed, shared by the dvc tests;
    they work on their own copies of it (`reproduced_copy`). Returns (repo, repro output).

    Under pytest-xdist every worker would build its own; the first builds it in the run's
    shared temp folder under a file lock and the others reuse it (it is only ever copied).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    repo, log = shared / "template" / "repo", shared / "template" / "repro.log"
    with FileLock(str(shared / "template.lock")):
        if not log.is_file():
            shutil.rmtree(repo.parent, ignore_errors=True)
            make_repo_copy(repo)
            proc = run(["dvc", "repro"], repo)
            run(["git", "add", "-A"], repo)
            run(["git", "commit", "-qm", "reproduced"], repo)
            log.write_text(proc.stdout + proc.stderr)
    return repo, log.read_text()


def copy_reproduced(template: Path, dest: Path) -> Path:
    """A copy of the reproduced repository (git history, DVC cache, outputs) at `dest`."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture
def reproduced_copy(reproduced_template: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the reproduced small repository, free to change."""
    return copy_reproduced(reproduced_template[0], tmp_path / "repo")
