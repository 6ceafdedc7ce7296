"""Benchmark the pipeline: wall time and peak memory per stage, plus in-run baselines.

Not a test: it prints figures. Each stage runs as its own process (`python -m stages.X`, as DVC
runs it) in a scratch copy of the repository, so peak RSS is per stage. Baselines are measured
in the same run on the same data: bare `implicit` fit() for train, `ranking_metrics_at_k` for
evaluate.

    python scripts/benchmark.py                 # default scale (100k users, 800k events)
    python scripts/benchmark.py --scale 1 10    # also 10x (1M users, 8M events)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]
DATA_STAGES = STAGES[:4]


def measure_stage(
    stage: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, str, str | None]:
    """Run one stage; (wall seconds, peak RSS in MiB, stdout, last error line or None) of
    that process alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", f"stages.{stage}"],
            cwd=cwd,
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        error = None
        if os.waitstatus_to_exitcode(status) != 0:
            error = err.read().decode().strip() or "no output"
        return wall, usage.ru_maxrss / 1024, out.read().decode(), error


def run_stage(stage: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run one stage; return (wall seconds, peak RSS in MiB, stdout); stop if it fails."""
    wall, rss, stdout, error = measure_stage(stage, cwd, env)
    if error is not None:
        raise SystemExit(f"stage {stage} failed:\n{error}")
    return wall, rss, stdout


def fit_seconds(train_stdout: str) -> float:
    """implicit's fit() time inside the train stage, as the stage prints it."""
    found = re.search(r"fit (\d+\.\d+)s", train_stdout)
    if not found:
        raise SystemExit(f"no fit time in the train stage's output:\n{train_stdout}")
    return float(found.group(1))


def scratch_repo(scale: float, parent: Path) -> Path:
    """A copy of the code and params.yaml with the shop scaled by `scale` (0.02 = a quick
    check, 10 = 1M users)."""
    repo = parent / f"scale{scale:g}"
    for package in ("stages", "recsys"):
        shutil.copytree(
            ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"]["users"] = max(100, round(params["generate"]["users"] * scale))
    params["generate"]["interactions"] = max(
        1000, round(params["generate"]["interactions"] * scale)
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def baselines(repo: Path, repeat: int) -> dict[str, float]:
    """Time the library calls our stages wrap, on the same data, in this process."""
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(repo))
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        from dataclasses import replace

        from recsys.evaluation import benchmark_evaluate
        from recsys.families.als import AlsModel, AlsParams, make_model
        from recsys.io import load_csr, load_npz
        from recsys.params import load
        from recsys.threads import stage_threads

        als = load(AlsParams.from_section, "als")
        k = yaml.safe_load(Path("params.yaml").read_text())["evaluate"]["k"]
        train = load_csr("data/train.npz")
        test = load_csr("data/test.npz")
        threads = stage_threads()
        fits = {}
        with threadpool_limits(1, "blas"):
            # the same model the train stage builds, with and without the loss pass
            for loss in [als.track_loss] * repeat + [False]:
                model = make_model(replace(als, track_loss=loss), threads)
                start = time.perf_counter()
                model.fit(train, show_progress=False)
                fits[loss] = min(fits.get(loss, float("inf")), time.perf_counter() - start)
            saved = load_npz("models/als.npz")
            served = AlsModel.from_factors(saved["user_factors"], saved["item_factors"], threads)
        scoring = benchmark_evaluate(train, test, served, k)
        return {
            "fit": fits[als.track_loss],
            "fit_no_loss": fits[False],
            "ranking_metrics_at_k": scoring["implicit_seconds"],
            "our_scoring": scoring["ours_seconds"],
            "map_ours": scoring["map_ours"],
            "map_implicit": scoring["map_implicit"],
        }
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))


def recommend_latency(repo: Path, calls: int = 2000) -> float:
    """Mean milliseconds for one recommendation from a loaded bundle."""
    code = (
        "import time, numpy as np\n"
        "from recsys.bundle import load_bundle\n"
        "b = load_bundle('models/bundle')\n"
        "ids = np.asarray(b.user_ids)[:: max(1, len(b.user_ids) // 1000)][:1000]\n"
        f"n = {calls}\n"
        "t = time.perf_counter()\n"
        "for i in range(n): b.recommend(str(ids[i % len(ids)]), 10)\n"
        "print((time.perf_counter() - t) / n * 1000)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def blas_cost(repo: Path, kernels: list[str], repeat: int) -> None:
    """Wall seconds of train, evaluate and export under each BLAS kernel (best of `repeat`),
    and the ratio to the first (e.g. native), measured in the same run on the same data."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):  # interleaved, so background load hits every kernel alike
        for kernel in kernels:
            for stage in ("train", "evaluate", "export"):
                wall = run_stage(stage, repo, {"RECSYS_BLAS_KERNEL": kernel})[0]
                times = best.setdefault(kernel, {})
                times[stage] = min(times.get(stage, float("inf")), wall)
    base = best[kernels[0]]
    print(f"\nBLAS kernels (best of {repeat}; ratio to {kernels[0]}):")
    print(f"{'kernel':<12}" + "".join(f"{s:>20}" for s in ("train", "evaluate", "export")))
    for kernel in kernels:
        cells = [f"{best[kernel][s]:8.2f} s ({best[kernel][s] / base[s]:4.2f}x)" for s in base]
        print(f"{kernel:<12}" + "".join(f"{c:>20}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--data-only", action="store_true", help="only generate/confidence/matrix/mask"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument(
        "--kernels",
        nargs="+",
        metavar="KERNEL",
        help="only time train/evaluate/export under each RECSYS_BLAS_KERNEL "
        "(e.g. native Haswell Nehalem): the cost of pinning one BLAS kernel",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="train and bare fit() runs; the best counts"
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if min(args.scale) < 1:
        parser.error(f"--scale must be at least 1, got {min(args.scale)}")
    parent = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    try:
        for scale in args.scale:
            repo = scratch_repo(scale, parent)
            stages = DATA_STAGES if args.data_only else STAGES
            gen = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
            print(f"\n== scale {scale}x: {gen['users']:,} users, {gen['interactions']:,} events")
            print(f"{'stage':<12}{'wall s':>10}{'peak MiB':>12}")
            walls: dict[str, float] = {}
            outputs: dict[str, str] = {}
            if args.kernels:
                for stage in DATA_STAGES:
                    run_stage(stage, repo)
                blas_cost(repo, args.kernels, args.repeat)
                continue
            for stage in stages:
                wall, rss, outputs[stage] = run_stage(stage, repo)
                walls[stage] = wall
                print(f"{stage:<12}{wall:>10.2f}{rss:>12.0f}")
            data = sum(walls[s] for s in DATA_STAGES)
            print(f"{'data stages':<12}{data:>10.2f}")
            print(f"{'all stages':<12}{sum(walls.values()):>10.2f}")
            if not args.data_only:
                # fit() times swing by 20% between runs on 2 shared cores, so the overhead
                # is the stage's wall time minus its own fit(); best of --repeat runs
                runs = [(walls["train"], fit_seconds(outputs["train"]))]
                for _ in range(args.repeat - 1):
                    wall, _, out = run_stage("train", repo)
                    runs.append((wall, fit_seconds(out)))
                wall, fit_in_stage = min(runs, key=lambda r: r[0] - r[1])
                print(
                    f"train stage {wall:.2f} s, of which implicit fit() {fit_in_stage:.2f} s: "
                    f"overhead {wall / fit_in_stage - 1:+.1%} (process start, imports, load, save)"
                )
                base = baselines(repo, args.repeat)
                fit, rank = base["fit"], base["ranking_metrics_at_k"]
                print(
                    f"  bare implicit fit() with the same params in this process: {fit:.2f} s "
                    f"(stage wall / bare fit: {wall / fit:.2f}x)"
                )
                loss_cost = fit / base["fit_no_loss"] - 1
                print(
                    f"  implicit fit() without the loss pass {base['fit_no_loss']:.2f} s: "
                    f"als.track_loss costs {loss_cost:+.1%}"
                )
                ours = base["our_scoring"]
                print(
                    f"evaluate scoring (model + baseline, every metric at every k) {ours:.2f} s "
                    f"vs ranking_metrics_at_k() alone {rank:.2f} s: {ours / rank:.2f}x; "
                    f"MAP {base['map_ours']:.6f} vs {base['map_implicit']:.6f}"
                )
                print(
                    f"  whole evaluate stage (process start, loading, persona, fallback): "
                    f"{walls['evaluate']:.2f} s"
                )
                print(f"one recommendation from a loaded bundle: {recommend_latency(repo):.4f} ms")
    finally:
        if args.keep:
            print(f"scratch copies kept in {parent}")
        else:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
