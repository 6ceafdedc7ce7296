"""implicit's ALS against Spark MLlib's ALS at the same rank, on the same training pairs.

Not a test: it prints figures. The shop is generated and split once; then, per family, the
train stage (fit time from its own summary line; wall, CPU and peak memory of the whole
process tree, the JVM included) and the evaluate stage (MAP@K with its bootstrap interval
from metrics/metrics.json) run on the same data/train.npz and data/test.npz.

    python scripts/bench_spark_als.py                       # 1x, rank 64
    python scripts/bench_spark_als.py --scale 10 --factors 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engines import measure_tree  # noqa: E402
from benchmark import run_stage, scratch_parent, scratch_repo  # noqa: E402

THREADS = 2


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
    args = parser.parse_args()
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
            f"{f'MAP@{k}':>9}  95% interval"
        )
        for family in ("als", "spark_als"):
            set_params(repo, {"model": {"type": family}})
            proc_args = [sys.executable, "-m", "stages.train"]
            wall, cpu, peak, out = measure_tree(proc_args, repo, env)
            found = re.search(r"fit ([0-9.]+)s", out)
            fit = float(found.group(1)) if found else float("nan")
            run_stage("evaluate", repo, env)
            metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
            print(
                f"{family:<10}{fit:>8.1f}{wall:>9.1f}{cpu:>8.1f}{peak:>10.0f}"
                f"{metrics['map_at_k']:>9.4f}  [{metrics['map_at_k_ci_low']:.4f}, "
                f"{metrics['map_at_k_ci_high']:.4f}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
