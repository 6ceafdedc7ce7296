"""Which engine should the confidence stage use? The stage itself, once per engine, one input.

Not a test: it prints figures. For each scale, the synthetic shop is generated once, then
`python -m stages.confidence` runs once per `engine.name` on the same event log, each in its
own process tree: wall time, CPU time and peak memory are those of the whole tree (the JVM
that pyspark starts included), sampled every 50 ms with psutil. Every engine must write the
same `data/confidence.parquet` bytes as the first one (the baseline, measured in the same
run); the last column says so.

- `pyarrow`: the earlier hand-written code (pyarrow CSV reader, numpy reductions);
- `duckdb`: the default (the same checked Arrow columns, aggregated by DuckDB's SQL);
- `spark`: Spark SQL on local[2] reading the CSV itself (Java 17 or 21 needed).

    python scripts/bench_engines.py --scale 30 --engines pyarrow duckdb
    python scripts/bench_engines.py --scale 1 10                 # all three engines
    python scripts/bench_engines.py --scale 1 10 30 100 --engines pyarrow duckdb \
        --plot docs/engines.png
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from benchmark import (
    parse_overrides,
    plot_curves,
    run_stage,
    scratch_parent,
    scratch_repo,
)

THREADS = 2
ENGINES = ["pyarrow", "duckdb", "spark"]


def measure_tree(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak MiB, stdout) of a command and every process it starts: RSS summed over
    the live tree at each sample, CPU summed over each process's last sample."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak, cpu = 0, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for p in tree:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, rss)
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} failed:\n{err.decode()[-2000:]}")
    return wall, sum(cpu.values()), peak / 2**20, out.decode()


def set_engine(repo: Path, name: str) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params.setdefault("engine", {})["name"] = name
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, nargs="+", default=[10.0])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=ENGINES)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param in the scratch copy, e.g. engine.spark_driver_memory=8g",
    )  # fmt: skip
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="draw wall time, CPU time and peak memory "
        "per engine against scale (docs/engines.png)"
    )  # fmt: skip
    args = parser.parse_args()
    if any(s <= 0 for s in args.scale):
        parser.error("--scale must be positive")
    overrides = parse_overrides(args.overrides)
    env = {**os.environ, "RECSYS_THREADS": str(THREADS)}
    values: list[dict] = []
    with scratch_parent("recsys-bench-engines-", args.keep) as parent:
        for scale in args.scale:
            repo = scratch_repo(scale, parent, overrides)
            params = yaml.safe_load((repo / "params.yaml").read_text())
            run_stage("generate", repo)
            events = params["generate"]["interactions"]
            size = (repo / "data" / "interactions.csv").stat().st_size / 2**20
            print(
                f"== scale {scale:g}: {events:,} events ({size:,.0f} MiB of CSV), "
                f"{params['confidence']['aggregation']} aggregation, {THREADS} threads / local[2]"
            )
            print(
                f"{'engine':<8}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'events/s':>12}"
                f"{'us/event':>10}  vs {args.engines[0]}, output"
            )
            base_wall = base_md5 = None
            for name in args.engines:
                set_engine(repo, name)
                wall, cpu, peak, _ = measure_tree(
                    [sys.executable, "-m", "stages.confidence"], repo, env
                )
                md5 = hashlib.md5((repo / "data/confidence.parquet").read_bytes()).hexdigest()
                base_wall, base_md5 = base_wall or wall, base_md5 or md5
                same = "same bytes" if md5 == base_md5 else "DIFFERENT BYTES"
                print(
                    f"{name:<8}{wall:>9.2f}{cpu:>9.2f}{peak:>10.0f}{events / wall:>12,.0f}"
                    f"{wall / events * 1e6:>10.2f}  {wall / base_wall:.2f}x wall, {same} "
                    f"({md5[:8]})",
                    flush=True,
                )
                for measure, value in (
                    ("wall time (s)", wall), ("CPU time (s)", cpu), ("peak memory (MiB)", peak)
                ):  # fmt: skip
                    values.append(
                        {"scale": scale, "engine": name, "measure": measure, "value": value}
                    )
    if args.plot and values:
        plot_curves(values, "engine", args.engines, args.plot)


if __name__ == "__main__":
    main()
