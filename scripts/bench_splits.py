"""Rank the model families under three splits of the same shop: random pairs, each user's
latest pairs (`mask.strategy: time`) and one global cutoff (`global_time`).

Not a test: it prints a Markdown table (docs/splits.md). The shop is generated once in a
scratch copy of the code and params.yaml (scaled by --scale); for each split the mask stage
runs once, then for each family train and evaluate run as DVC runs them (`python -m
stages.X`), and MAP@K, its 95% bootstrap interval and NDCG@K come from metrics/metrics.json.

    python scripts/bench_splits.py --scale 0.1 --families als bpr itemknn ease rp3beta popular
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from recsys.params import update_params_file

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {
    "random": {"strategy": "random"},
    "time": {"strategy": "time"},
    "global_time": {"strategy": "global_time"},
}


def stage(name: str, repo: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=repo, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: stage {name} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shop size (1 = params.yaml)")
    parser.add_argument("--families", nargs="+", default=["als", "itemknn", "ease", "popular"])
    parser.add_argument("--cutoff", default=0.8, type=float, help="global_time quantile (0.8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-splits-") as tmp:
        repo = Path(tmp)
        for package in ("stages", "recsys"):
            shutil.copytree(
                ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
        gen = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
        update_params_file(
            repo / "params.yaml",
            {
                "generate": {
                    "users": round(gen["users"] * args.scale),
                    "interactions": round(gen["interactions"] * args.scale),
                },
                "mask": {"cutoff": args.cutoff},
            },
        )
        for name in ("generate", "confidence", "matrix"):
            print(stage(name, repo), file=sys.stderr, flush=True)
        rows: dict[str, dict[str, dict]] = {}
        for split, values in SPLITS.items():
            update_params_file(repo / "params.yaml", {"mask": values})
            print(stage("mask", repo), file=sys.stderr, flush=True)
            report = json.loads((repo / "metrics/split.json").read_text())
            rows[split] = {"_split": report}
            for family in args.families:
                update_params_file(repo / "params.yaml", {"model": {"type": family}})
                stage("train", repo)
                print(stage("evaluate", repo), file=sys.stderr, flush=True)
                rows[split][family] = json.loads((repo / "metrics/metrics.json").read_text())
    print(table(rows, args.families))


def table(rows: dict[str, dict[str, dict]], families: list[str]) -> str:
    """Markdown: per split, each family's MAP@K [95% interval], NDCG@K and rank by MAP."""
    k = rows["random"][families[0]]["k"]
    lines = [
        f"| split | held-out pairs / users | family | MAP@{k} [95% interval] | NDCG@{k} | rank |",
        "|---|---|---|---|---|---|",
    ]
    for split, results in rows.items():
        report = results["_split"]
        order = sorted(families, key=lambda f: -results[f]["map_at_k"])
        for family in order:
            m = results[family]
            lines.append(
                f"| {split} | {report['test_pairs']:,} / {report['test_users']:,} | {family} | "
                f"{m['map_at_k']:.4f} [{m['map_at_k_ci_low']:.4f}, {m['map_at_k_ci_high']:.4f}] "
                f"| {m['ndcg_at_k']:.4f} | {order.index(family) + 1} |"
            )
    extra = rows["global_time"]["_split"]
    lines.append("")
    lines.append(
        f"global_time: cutoff {extra['cutoff']}; left out {extra['cold_users']:,} users first "
        f"seen after it ({extra['cold_user_pairs']:,} pairs); {extra['cold_items']:,} items "
        f"first seen after it, on {extra['cold_item_test_pairs']:,} held-out pairs"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
