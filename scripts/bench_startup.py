"""What a stage process costs before it does any work: CPU seconds to import each stage.

Not a test: it prints figures. Every stage is a new Python process, and the test suite
starts a few hundred of them (docs/testing.md), so their start is most of its CPU. Each
stage module is imported in a fresh process, `--repeats` times, with OpenBLAS's thread pool
as `recsys` starts it (one thread) and, as the baseline in the same run, with one thread
per core, which is what OpenBLAS does when nothing sets `OPENBLAS_NUM_THREADS`.

    python scripts/bench_startup.py                # the seven stages, 7 repeats each
    python scripts/bench_startup.py --repeats 15 --modules stages.train recsys.service
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    f"stages.{name}"
    for name in ("generate", "confidence", "matrix", "mask", "train", "evaluate", "export")
]


def process_cost(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one command run to its end in ROOT."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def import_cost(module: str, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `python -c 'import MODULE'` in a fresh process."""
    return process_cost([sys.executable, "-c", f"import {module}"], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modules", nargs="+", default=STAGES)
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    runs = {"one thread": env, f"{cores} threads": {**env, "OPENBLAS_NUM_THREADS": str(cores)}}
    print(f"== import of each module in a fresh process, median of {args.repeats}, {cores} cores")
    print(f"{'module':<20} {'pool':<11} {'CPU s':>7} {'wall s':>7}")
    totals = dict.fromkeys(runs, 0.0)
    for module in args.modules:
        # interleaved, so that a change in the machine's load hits both pools alike
        costs = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, run_env in runs.items():
                costs[label].append(import_cost(module, run_env))
        for label, measured in costs.items():
            cpu = statistics.median(c for c, _ in measured)
            wall = statistics.median(w for _, w in measured)
            totals[label] += cpu
            print(f"{module:<20} {label:<11} {cpu:7.3f} {wall:7.3f}")
    one, many = totals.values()
    print(
        f"total CPU s: {one:.2f} with one thread, {many:.2f} with {cores} "
        f"({one / many:.2f}x, {many - one:.2f} CPU-s saved per run of the {len(args.modules)})"
    )


if __name__ == "__main__":
    main()
