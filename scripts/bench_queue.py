"""Benchmark the experiment queue: 4 ALS variants with `-j 2` versus one after another.

Not a test: it prints figures. It clones this repository (committed state) into a scratch
folder that shares this repository's DVC cache, checks the committed outputs out, then times:

1. the 4 variants queued and run with `dvc queue start -j 1` (one after another),
2. the same 4 (as new experiments) with `dvc queue start -j 2`,
3. 2 experiments whose params change nothing, so no stage runs: DVC's fixed cost per
   experiment (stash, temp copy, checkout, commit of the result).

    python scripts/bench_queue.py
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    ["-S", "als.factors=64", "-S", "als.regularization=0.01"],
    ["-S", "als.factors=64", "-S", "als.regularization=0.1"],
    ["-S", "als.factors=128", "-S", "als.regularization=0.01"],
    ["-S", "als.factors=128", "-S", "als.regularization=0.1"],
]
# The dvc of this interpreter's environment, whether or not its bin directory is on PATH.
DVC = [sys.executable, "-m", "dvc"]
# The stages' `python -m stages.X` commands must find this environment's python too.
BIN = str(Path(sys.executable).parent)
ENV = os.environ | {"PATH": os.pathsep.join([BIN, os.environ.get("PATH", "")])}


def sh(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=ENV)
    except FileNotFoundError:
        raise SystemExit(f"error: {args[0]} is not installed or not on PATH") from None
    if proc.returncode != 0:
        shown = ["dvc", *args[len(DVC) :]] if args[: len(DVC)] == DVC else args
        raise SystemExit(f"{' '.join(shown)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def run_queue(repo: Path, runs: list[list[str]], jobs: int, tag: str) -> float:
    """Queue `runs`, start `jobs` workers, wait until the queue drains; return wall seconds."""
    for i, overrides in enumerate(runs):
        sh([*DVC, "exp", "run", "--queue", "--name", f"{tag}-{i}", *overrides], repo)
    start = time.perf_counter()
    sh([*DVC, "queue", "start", "-j", str(jobs)], repo)
    while re.search(r"\b(Queued|Running)\b", sh([*DVC, "queue", "status"], repo)):
        time.sleep(0.5)
    wall = time.perf_counter() - start
    status = sh([*DVC, "queue", "status"], repo)
    failed = [line for line in status.splitlines() if tag in line and "Success" not in line]
    if failed:
        raise SystemExit(f"experiments did not succeed:\n{status}")
    return wall


def main() -> None:
    if importlib.util.find_spec("dvc") is None:
        raise SystemExit(f"error: dvc is not installed for {sys.executable}")
    scratch = Path(tempfile.mkdtemp(prefix="recsys-queue-bench-"))
    repo = scratch / "repo"
    try:
        sh(["git", "clone", "-q", str(ROOT), str(repo)], scratch)
        sh([*DVC, "cache", "dir", "--local", str(ROOT / ".dvc" / "cache")], repo)
        sh([*DVC, "checkout", "-q"], repo)
        status = sh([*DVC, "status"], repo)
        if "up to date" not in status:
            raise SystemExit(f"commit and reproduce the pipeline first (dvc status):\n{status}")
        seq = run_queue(repo, VARIANTS, 1, "seq")
        par = run_queue(repo, VARIANTS, 2, "par")
        noop = run_queue(repo, [["-S", "evaluate.k=20"]] * 2, 1, "noop") / 2
        print(f"4 ALS variants, dvc queue start -j 1 (one after another): {seq:7.1f} s")
        print(f"4 ALS variants, dvc queue start -j 2 (parallel):          {par:7.1f} s")
        print(f"speed-up -j 2 vs -j 1:                                    {seq / par:7.2f}x")
        print(f"DVC fixed cost per experiment (no stage runs):            {noop:7.1f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
