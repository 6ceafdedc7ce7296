"""The docs stay true: the site builds strictly, the README stays a front page, every `recsys`
command is documented, and the commands the README, getting-started and experiments pages show
run as written on a small reproduced copy.

A fenced `bash` block preceded by the line `<!-- test: runs -->` is executed line by line
(continuation lines joined, comments dropped); `source .venv/bin/activate` is what this test's
environment already is. After `dvc queue start` the test waits for the queue, as a reader does
with `dvc queue status`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from recsys.commands import COMMANDS
from tests.conftest import ROOT, recsys, run, tool_env

RUNS = "<!-- test: runs -->"
EXECUTED = ("docs/getting-started.md", "README.md", "docs/experiments.md")
README_MAX_LINES = 300


def runnable_blocks(path: Path) -> list[str]:
    """The text of every fenced block marked `RUNS` in a Markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() != RUNS:
            continue
        assert lines[i + 1].startswith("```bash"), f"{path}:{i + 2}: expected a bash block"
        end = lines.index("```", i + 2)
        blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def commands(block: str) -> list[list[str]]:
    """Shell lines of a block as argument lists: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def wait_for_queue(repo: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            assert "Failed" not in status, status
            return
        time.sleep(1)
    raise AssertionError(f"the queue did not finish in {timeout:.0f} s")


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
    docs say they print."""
    seen: set[str] = set()
    outputs: dict[str, str] = {}
    for name in EXECUTED:
        for block in runnable_blocks(ROOT / name):
            if block in seen:
                continue
            seen.add(block)
            for argv in commands(block):
                if argv[:1] == ["source"]:
                    continue
                proc = subprocess.run(
                    argv,
                    cwd=reproduced_copy,
                    env=tool_env(),
                    capture_output=True,
                    text=True,
                    timeout=400,
                )
                shown = shlex.join(argv)
                assert proc.returncode == 0, f"{name}: {shown}\n{proc.stdout}\n{proc.stderr}"
                outputs[shown] = proc.stdout
                if argv[:3] == ["dvc", "queue", "start"]:
                    wait_for_queue(reproduced_copy)
    shows = [out for cmd, out in outputs.items() if cmd.startswith("dvc exp show")]
    assert shows and all("model.type" in out for out in shows)
    assert any("| ease " in out for out in shows), "the EASE run is told apart by model.type"
    compared = next(out for cmd, out in outputs.items() if cmd.startswith("recsys compare"))
    assert compared.startswith("## DVC report: `HEAD` -> `wider`")
    assert "dvc status" in outputs and "up to date" in outputs["dvc status"]
    assert len(outputs["recsys recommend 2 -n 5"].split()) == 5
