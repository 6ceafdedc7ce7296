"""The docs stay true: the site builds strictly, the README stays a front page, every `recsys`
command is documented, and the commands the README, getting-started and experiments pages show
run as written on a small reproduced copy.

A fenced `bash` block preceded by the line `<!-- test: runs -->` is executed line by line
(continuation lines joined, comments dropped); `source .venv/bin/activate` is what this test's
environment already is. The experiments recipe (the README's and the experiments page's, the
same block) runs in tests/test_experiments_queue.py, whose queue it is: one queue, not two.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from recsys.commands import COMMANDS
from tests.documented import is_the_experiments_recipe, run_block, runnable_blocks
from tests.helpers import ROOT, recsys, tool_env

EXECUTED = ("docs/getting-started.md", "README.md", "docs/experiments.md")
README_MAX_LINES = 300


def mkdocs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = tool_env() | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        ["mkdocs", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    proc = mkdocs("build", "--strict", "--site-dir", str(tmp_path / "site"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site/getting-started/index.html").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    """The control: the strict build is what catches a page that links to nothing."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy2(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs/index.md"
    page.write_text(page.read_text() + "\nSee [the old page](no-such-page.md).\n")
    proc = mkdocs("build", "--strict", "--site-dir", str(tmp_path / "site"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(re.findall(r"[\w-]+\.md", nav))


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("make repro", "make test"):
        assert f"\n{command}" in readme


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_is_documented_and_helps(name: str) -> None:
    assert f"`recsys {name}" in (ROOT / "docs/cli.md").read_text()
    assert f"  {name} " in recsys("--help", cwd=ROOT).stdout
    proc = recsys(name, "--help", cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: recsys {name}")


@pytest.mark.parametrize("args", [["nope"], ["compare"], ["check-repro", "--bogus"], []])
def test_a_bad_command_line_is_one_line_and_exit_2(args: list[str]) -> None:
    proc = recsys(*args, cwd=ROOT)
    assert proc.returncode == 2
    if args:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_the_experiments_recipe_is_the_same_in_the_readme_and_the_docs() -> None:
    readme = runnable_blocks(ROOT / "README.md")
    experiments = runnable_blocks(ROOT / "docs/experiments.md")
    assert experiments and experiments[0] in readme


@pytest.mark.dvc
def test_documented_commands_run_as_written(reproduced_copy: Path) -> None:
    """Each documented command exits 0 on a small reproduced copy; a few print what the
    docs say they print. The experiments recipe is left to the queue's own test."""
    outputs: dict[str, str] = {}
    recipes = 0
    for name in EXECUTED:
        for block in runnable_blocks(ROOT / name):
            if is_the_experiments_recipe(block):
                recipes += 1
                continue
            outputs |= run_block(block, reproduced_copy, name)
    assert recipes == 2  # the README's and the experiments page's
    shows = [out for cmd, out in outputs.items() if cmd.startswith("dvc exp show")]
    assert shows and all("model.type" in out for out in shows)
    assert "dvc status" in outputs and "up to date" in outputs["dvc status"]
    assert len(outputs["recsys recommend 2 -n 5"].split()) == 5
