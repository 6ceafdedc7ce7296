"""Where the test suite's time goes: `make test`'s pytest run, with CPU seconds per test module.

Not a test: it prints figures. It runs the suite as `make test` does (pytest-xdist,
`--dist loadgroup`) with this file loaded as a pytest plugin in every worker, which records
each test's wall time and CPU time: the worker's own plus that of the subprocesses it waited
for (dvc, the stages, the `recsys` command). A module-scoped fixture is counted in the first
test that uses it. Daemons a test does not wait for (the S3 server, `dvc queue` workers,
services stopped by a signal) are only in the whole run's figure, which this script takes
from the operating system when pytest exits.

Every Python process the run starts (dvc, each stage, the `recsys` command, the pytest
workers themselves) also reports its own CPU seconds when it exits, through a
`sitecustomize` module put first on PYTHONPATH for the run, so the CPU is also shown by kind
of process. Processes killed by a signal, and the few started with their own PYTHONPATH,
are missed there.

The baseline is the machine itself: the whole run's CPU seconds divided by the cores is the
wall time a perfect schedule could reach, printed next to the measured wall time.
The machine's speed is measured too, as a fixed Python loop timed before and after the run:
on a shared host it moves by 10-20 % within minutes, so two runs compare by their CPU in
units of that loop rather than by seconds.

    python scripts/bench_tests.py                  # the default suite, as `make test` runs it
    python scripts/bench_tests.py --workers 2 -- tests/test_gate.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOG = "RECSYS_BENCH_TESTS_LOG"  # where each worker appends one JSON line per test
PROCESS_LOG = "RECSYS_BENCH_TESTS_PROCESSES"  # where every Python process appends one line

# Loaded by every Python process of the run (PYTHONPATH): its own CPU seconds at exit.
SITECUSTOMIZE = f"""
import atexit, os, sys


def _report():
    import json, resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {{"argv": list(getattr(sys, "orig_argv", sys.argv)),
             "cpu": usage.ru_utime + usage.ru_stime}}
    with open(os.environ["{PROCESS_LOG}"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\\n")


if os.environ.get("{PROCESS_LOG}"):
    atexit.register(_report)
"""


def process_kind(argv: list[str]) -> str:
    """What a process was, from its command line: `dvc repro`, `stage train`, `recsys gate`."""
    args = argv[1:]  # after the interpreter: -m MODULE, -c CODE or a console script's path
    while args[:1] == ["-u"]:
        args = args[1:]
    if args[:1] == ["-c"]:
        code = args[1] if len(args) > 1 else ""
        if "exec(eval(sys.stdin.readline()))" in code:
            return "pytest worker (the in-process tests)"
        return "python -c"
    if args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
    else:
        module, rest = Path(args[0]).name if args else "python", args[1:]
    if module.startswith("stages."):
        return f"stage {module.removeprefix('stages.')}"
    if module in ("dvc", "recsys", "gto"):
        words = [a for a in rest if not a.startswith("-")][:1]
        return " ".join([module, *words])
    return module


def machine_ticks() -> tuple[int, int] | None:
    """(busy, idle) clock ticks of the whole machine so far, from /proc/stat (Linux only):
    what the run leaves idle, daemons it never waits for included in busy."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]) - idle, idle


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Plugin side: one JSON line per test with its wall, own CPU and waited-children CPU."""
    own0, children0 = _cpu()
    start = time.perf_counter()
    result = yield
    own1, children1 = _cpu()
    if os.environ.get(LOG):
        line = {
            "test": item.nodeid.split("@")[0],
            "wall": time.perf_counter() - start,
            "cpu": (own1 - own0) + (children1 - children0),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "end": time.time(),
        }
        with open(os.environ[LOG], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    return result


# A fixed single-threaded workload, timed before and after the suite: the machine's own speed
# moves by 10-20 % from hour to hour (shared hosts), which no change to the tests explains.
REFERENCE = "s = 0\nfor i in range(10_000_000):\n    s += i\n"


def reference_cpu(repeats: int = 5) -> float:
    """Median CPU seconds of the reference workload in a fresh interpreter."""
    from bench_startup import process_cost  # a sibling script

    return statistics.median(process_cost([sys.executable, "-c", REFERENCE])[0]
                             for _ in range(repeats))  # fmt: skip


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=max(2, cores), help="pytest-xdist workers")
    parser.add_argument("--top", type=int, default=15, help="modules and kinds to list")
    parser.add_argument("--slowest", type=int, default=8, help="tests to list")
    parser.add_argument("--waiting", type=int, default=8, help="tests to list by wall - CPU")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        log, processes = Path(scratch) / "tests.jsonl", Path(scratch) / "processes.jsonl"
        (Path(scratch) / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        env = os.environ | {
            LOG: str(log),
            PROCESS_LOG: str(processes),
            "PYTHONPATH": os.pathsep.join(
                [scratch, str(ROOT / "scripts"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "bench_tests", "-p", "no:cacheprovider",
               "-n", str(args.workers), "--dist", "loadgroup", "--no-loadscope-reorder",
               *args.pytest_args]  # fmt: skip
        reference_before = reference_cpu()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        ticks_before = machine_ticks()
        started = time.time()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ticks_after = machine_ticks()
        reference_after = reference_cpu()
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        exits = (
            [json.loads(line) for line in processes.read_text().splitlines()]
            if processes.exists()
            else []
        )

    summary = next(
        (line.strip("= ") for line in reversed(proc.stdout.splitlines()) if " in " in line), ""
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
        sys.exit(f"bench_tests: pytest exited {proc.returncode}: {summary}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    total = user + system
    per_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        module = row["test"].split("::")[0]
        per_module[module][0] += row["cpu"]
        per_module[module][1] += 1
    counted = sum(row["cpu"] for row in rows)

    print(f"== pytest -n {args.workers} --dist loadgroup on {cores} cores: {summary}")
    build = ", ".join(platform.python_build())
    print(f"python  {platform.python_version()} ({build}; {platform.python_compiler()})")
    print(f"wall {wall:8.1f} s")
    print(f"CPU  {total:8.1f} s   user {user:.1f} + system {system:.1f}, every process waited for")
    print(f"     {total / cores:8.1f} s   a perfect {cores}-core schedule's wall time: CPU / cores")
    print(f"     {wall / (total / cores):8.2f} x   measured wall against that bound")
    print(f"     {counted:8.1f} s   CPU counted per test ({counted / total:.0%} of the run)")
    if ticks_before and ticks_after:
        busy, idle = (a - b for a, b in zip(ticks_after, ticks_before, strict=True))
        tick = os.sysconf("SC_CLK_TCK")
        print(
            f"     {busy / tick:8.1f} s   the machine's busy CPU over the run, every process "
            f"included; idle {idle / (busy + idle):.0%} of the cores' time"
        )
    reference = (reference_before + reference_after) / 2
    print(
        f"     {reference:8.2f} s   the machine's speed: a fixed Python loop took "
        f"{reference_before:.2f} s before the run and {reference_after:.2f} s after; "
        f"the run's CPU is {total / reference:.0f} of them"
    )
    last = {row["worker"]: row for row in sorted(rows, key=lambda r: r["end"])}  # latest wins
    lasts = sorted(last.values(), key=lambda r: r["end"])
    ends = ", ".join(f"{r['end'] - started:.1f}" for r in lasts)
    print(f"     workers' last test ended at {ends} s (idle after that: the run's tail)")
    if lasts:
        print(f"     the last: {lasts[-1]['test']} ({lasts[-1]['wall']:.1f} s)")
    print(f"\n{'CPU s':>8} {'share':>6} {'tests':>6}  module (top {args.top})")
    for module, (cpu, count) in sorted(per_module.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{cpu:8.1f} {cpu / total:6.1%} {int(count):6d}  {module}")
    per_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in exits:
        kind = per_kind[process_kind(row["argv"])]
        kind[0] += row["cpu"]
        kind[1] += 1
    reported = sum(cpu for cpu, _ in per_kind.values())
    print(
        f"\n{'CPU s':>8} {'share':>6} {'runs':>6} {'s/run':>6}  kind of Python process "
        f"(top {args.top}; {reported:.1f} s reported at exit, {reported / total:.0%} of the run)"
    )
    for kind, (cpu, count) in sorted(per_kind.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{cpu:8.1f} {cpu / total:6.1%} {int(count):6d} {cpu / count:6.2f}  {kind}")
    print(f"\n{'CPU s':>8} {'wall s':>7}  slowest tests by CPU")
    for row in sorted(rows, key=lambda r: -r["cpu"])[: args.slowest]:
        print(f"{row['cpu']:8.1f} {row['wall']:7.1f}  {row['test']}")
    # A worker that waits (a sleep, a retry's back-off, a daemon doing the work) leaves its
    # core to the other worker only if that one has work: these are where the run can idle.
    print(f"\n{'wait s':>8} {'wall s':>7}  tests waiting longest (wall - CPU counted)")
    for row in sorted(rows, key=lambda r: r["cpu"] - r["wall"])[: args.waiting]:
        print(f"{row['wall'] - row['cpu']:8.1f} {row['wall']:7.1f}  {row['test']}")


if __name__ == "__main__":
    main()
