"""Fixtures and collection hooks; the helpers they use (a repository copy, `run`, `recsys`)
are in `tests/helpers.py`."""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers import ROOT, copy_reproduced, make_repo_copy, run

# The Spark tests' JVMs (drivers, executors, a standalone master and workers) live for
# seconds: the optimising JIT compiler and the parallel collector's threads cost them more
# than they win. The C1 compiler alone and one GC thread cut the cluster test's CPU by two
# fifths and its wall time by a quarter (docs/testing.md); the bytes Spark writes do not
# depend on either. An explicit JDK_JAVA_OPTIONS, even empty, is kept.
os.environ.setdefault("JDK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the project's packages once, before any worker starts. The repository copies
    take `__pycache__` along (`make_repo_copy`), so their stage processes load compiled
    modules; where PYTHONDONTWRITEBYTECODE is set (CI images often set it), Python would
    otherwise compile the library again in every process. py_compile writes regardless of
    that variable, and an up-to-date module is left alone."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for package in ("recsys", "stages"):
            compileall.compile_dir(ROOT / package, quiet=1)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """For `make test` (pytest-xdist, `--dist loadgroup`): the tests of a module that share a
    module-scoped fixture go to one worker, so the fixture (a reproduced copy, a published
    remote, a queue run) is built once, not once per worker that picks up one of its tests;
    and the tests marked `long` start first, then the rest driving dvc, so that the slowest
    do not start last.

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
    items.sort(
        key=lambda item: (
            item.get_closest_marker("long") is None,
            item.get_closest_marker("dvc") is None,
        )
    )
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


@pytest.fixture(scope="session", autouse=True)
def dvc_site_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """DVC keeps state for each repository it runs in (file hashes, link records, its data
    index) in a site cache outside the repository, under /var/tmp/dvc unless told; each
    throw-away copy would leave an entry there. The run's own temp folder holds them instead
    (a test that needs its own still sets one)."""
    os.environ.setdefault(
        "DVC_SITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dvc-site-cache")
    )


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


@pytest.fixture
def reproduced_copy(reproduced_template: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the reproduced small repository, free to change."""
    return copy_reproduced(reproduced_template[0], tmp_path / "repo")
