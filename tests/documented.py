"""Commands the docs show, as a reader runs them.

A fenced `bash` block preceded by the line `<!-- test: runs -->` is executed line by line
(continuation lines joined, comments dropped); `source .venv/bin/activate` is what the tests'
environment already is.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import tool_env

RUNS = "<!-- test: runs -->"


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


def run_block(block: str, repo: Path, source: str) -> dict[str, str]:
    """Run a documented block line by line in `repo` as a reader types it; each line must
    exit 0. Returns command line -> what it printed."""
    outputs: dict[str, str] = {}
    for argv in commands(block):
        if argv[:1] == ["source"]:
            continue
        # Output goes to files, not pipes, as on a terminal: a command that leaves a daemon
        # behind (`dvc queue start`) returns at once instead of when the daemon closes the pipe.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run(
                argv, cwd=repo, env=tool_env(), stdout=out, stderr=err, timeout=400
            ).returncode
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        shown = shlex.join(argv)
        assert code == 0, f"{source}: {shown}\n{stdout}\n{stderr}"
        outputs[shown] = stdout
    return outputs


def is_the_experiments_recipe(block: str) -> bool:
    return "dvc queue start" in block
