"""implicit's ALS against Spark MLlib's ALS at the same rank, on the same training pairs.

Not a test: it prints figures. The shop is generated and split once; then, per family, the
train stage (fit time from its own summary line; wall, CPU and peak memory of the whole
process tree, the JVM included) and the evaluate stage (MAP@K with its bootstrap interval
from metrics/metrics.json) run on the same data/train.npz and data/test.npz.

    python scripts/bench_spark_als.py                       # 1x, rank 64
    python scripts/bench_spark_als.py --scale 10 --factors 64
    python scripts/bench_spark_als.py --grid alpha=10,40,100 --grid regularization=0.01,0.2,1

`--grid KEY=V1,V2,...` sweeps `spark_als.KEY` (every combination of the grids, one fit
each, on the same split); implicit's ALS runs once, first, with its own params.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from pathlib import Path

import yaml

from bench_engines import measure_tree
from benchmark import run_stage, scratch_parent, scratch_repo

THREADS = 2
SWEEPABLE = ("alpha", "regularization", "iterations", "user_blocks", "item_blocks", "seed")


def parse_grid(items: list[str], parser: argparse.ArgumentParser) -> list[dict[str, object]]:
    """Every combination of `KEY=V1,V2` grids, as spark_als updates (values parsed as YAML)."""
    keys, choices = [], []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in SWEEPABLE or not values:
            parser.error(f"--grid {item!r}; expected KEY=V1,V2,... with KEY one of {SWEEPABLE}")
        parsed = [yaml.safe_load(v) for v in values.split(",")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in parsed):
            parser.error(f"--grid {item!r}: every value must be a number")
        keys.append(key)
        choices.append(parsed)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2",
        help=f"sweep spark_als.KEY over these values ({', '.join(SWEEPABLE)})",
    )  # fmt: skip
    args = parser.parse_args()
    grid = parse_grid(args.grid, parser)
    env = {**os.environ, "RECSYS_THREADS": str(THREADS)}
    with scratch_parent("recsys-bench-spark-als-", args.keep) as parent:
        repo = scratch_repo(args.scale, parent)
        set_params(
            repo,
            {
                "als": {"factors": args.factors, "iterations": args.iterations,
                        "track_loss": False},
                "spark_als": {"factors": args.factors, "iterations": args.iterations,
                              "master": f"local[{THREADS}]"},
            },
        )  # fmt: skip
        for stage in ("generate", "confidence", "matrix", "mask"):
            run_stage(stage, repo, env)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        k = params["evaluate"]["k"]
        print(
            f"== scale {args.scale:g}: {params['generate']['interactions']:,} events, rank "
            f"{args.factors}, {args.iterations} iterations, {THREADS} threads / local[{THREADS}]"
        )
        print(
            f"{'family':<10}{'fit s':>8}{'stage s':>9}{'CPU s':>8}{'peak MiB':>10}"
            f"{f'MAP@{k}':>9}  95% interval        spark_als"
        )
        runs = [("als", {})] + [("spark_als", point) for point in grid or [{}]]
        for family, point in runs:
            set_params(repo, {"model": {"type": family}, "spark_als": point})
            spark = params["spark_als"] | point
            setting = (
                f"alpha {spark['alpha']:g}, regularization {spark['regularization']:g}"
                if family == "spark_als"
                else ""
            )
            proc_args = [sys.executable, "-m", "stages.train"]
            wall, cpu, peak, out = measure_tree(proc_args, repo, env)
            found = re.search(r"fit ([0-9.]+)s", out)
            fit = float(found.group(1)) if found else float("nan")
            run_stage("evaluate", repo, env)
            metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
            print(
                f"{family:<10}{fit:>8.1f}{wall:>9.1f}{cpu:>8.1f}{peak:>10.0f}"
                f"{metrics['map_at_k']:>9.4f}  [{metrics['map_at_k_ci_low']:.4f}, "
                f"{metrics['map_at_k_ci_high']:.4f}]  {setting}",
                flush=True,
            )


if __name__ == "__main__":
    main()
