"""Benchmark the model families side by side: fit time and peak memory of train, scoring
time (in all and per evaluated user) and peak memory of evaluate, model and bundle size, per
family, on the same data in the same run.

Not a test: it prints figures. The data stages run once per scale in a scratch copy of the
repository; then, for every family, `model.type` is set in the copy's params.yaml (each
family's own section as in params.yaml) and train, evaluate and export run as their own
processes (`python -m stages.X`, as DVC runs them), so peak RSS is per stage and family.
ALS is always measured too, as the reference.

    python scripts/bench_families.py                      # default scale, every family
    python scripts/bench_families.py --scale 1 10         # also 10x
    python scripts/bench_families.py --scale 0.02 --families als ease   # a quick check
    python scripts/bench_families.py --families ease rp3beta itemknn rerank
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from recsys.families import FAMILIES

from benchmark import fit_seconds, measure_stage, scratch_parent, scratch_repo

DATA_STAGES = ["generate", "confidence", "matrix", "mask"]
MODEL_STAGES = ["train", "evaluate", "export"]


def scoring_seconds(evaluate_stdout: str) -> float:
    """The evaluate stage's scoring time, as it prints it (timings are not in its metrics:
    they would make every run's metrics differ)."""
    found = re.search(r"scoring (\d+\.\d+)s", evaluate_stdout)
    if not found:
        raise SystemExit(f"no scoring time in the evaluate stage's output:\n{evaluate_stdout}")
    return float(found.group(1))


def set_family(repo: Path, family: str) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"] = {"type": family}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES),
        help="families to measure (ALS is always added as the reference)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args()
    if min(args.scale) <= 0:
        parser.error(f"--scale must be positive, got {min(args.scale)}")
    families = ["als", *[f for f in args.families if f != "als"]]
    with scratch_parent("recsys-bench-families-", args.keep) as parent:
        for scale in args.scale:
            repo = scratch_repo(scale, parent)
            gen = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
            print(f"\n== scale {scale:g}x: {gen['users']:,} users, {gen['interactions']:,} events")
            for stage in DATA_STAGES:
                error = measure_stage(stage, repo).error
                if error:
                    raise SystemExit(f"stage {stage} failed: {error.splitlines()[-1]}")
            head = (
                f"{'family':<9}{'fit s':>8}{'train s':>9}{'train MiB':>11}{'model MiB':>11}"
                f"{'scoring s':>11}{'ms/user':>9}{'evaluate s':>12}{'eval MiB':>10}"
                f"{'export s':>10}{'bundle MiB':>12}{'MAP@K':>9}"
            )
            print(head)
            for family in families:
                set_family(repo, family)
                results = {stage: measure_stage(stage, repo) for stage in MODEL_STAGES[:1]}
                train = results["train"]
                wall, rss, out, error = train.wall, train.rss, train.stdout, train.error
                if error:
                    print(f"{family:<9}refused or failed: {error.splitlines()[-1]}")
                    continue
                for stage in MODEL_STAGES[1:]:
                    results[stage] = measure_stage(stage, repo)
                    if results[stage].error:
                        raise SystemExit(f"{family}: {stage} failed: {results[stage].error}")
                model_mib = (repo / "models" / f"{family}.npz").stat().st_size / 2**20
                evaluate = results["evaluate"]
                ev_wall, ev_rss, ev_out = evaluate.wall, evaluate.rss, evaluate.stdout
                fit = fit_seconds(out)
                scoring = scoring_seconds(ev_out)
                metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
                map_k = metrics["map_at_k"]
                per_user = 1000 * scoring / metrics["users"] if metrics["users"] else float("nan")
                bundle = repo / "models" / "bundle"
                bundle_mib = sum(f.stat().st_size for f in bundle.iterdir()) / 2**20
                print(
                    f"{family:<9}{fit:>8.2f}{wall:>9.2f}{rss:>11.0f}{model_mib:>11.1f}"
                    f"{scoring:>11.2f}{per_user:>9.3f}{ev_wall:>12.2f}{ev_rss:>10.0f}"
                    f"{results['export'].wall:>10.2f}{bundle_mib:>12.1f}{map_k:>9.4f}"
                )


if __name__ == "__main__":
    main()
