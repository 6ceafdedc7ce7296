"""Benchmark the pipeline: wall time, CPU time and peak memory per stage, plus baselines.

Not a test: it prints figures. Each stage runs as its own process (`python -m stages.X`, as DVC
runs it) in a scratch copy of the repository, so peak RSS is per stage. Baselines are measured
in the same run on the same data: bare `implicit` fit() for train, `ranking_metrics_at_k` for
evaluate.

    python scripts/benchmark.py                 # default scale (100k users, 800k events)
    python scripts/benchmark.py --scale 1 10    # also 10x (1M users, 8M events)

The cost curve (docs/scale.md): every scale's stage table, then each stage's growth from one
scale to the next against the growth of what drives it (events; users for evaluate and
export), and a log-log PNG of time and memory per stage:

    python scripts/benchmark.py --scale 1 10 100 --set als.factors=64 --stages-only \
        --plot docs/scale.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]
DATA_STAGES = STAGES[:4]
# what each stage's cost follows: users for evaluate and export, else events
DRIVERS = {"evaluate": "users", "export": "users"}
GROWTH_SLACK = 1.2  # "linear within 20%": a stage may grow at most 1.2x its driver


@contextlib.contextmanager
def scratch_parent(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for scratch copies, removed at the end unless `keep`."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield parent
    finally:
        if keep:
            print(f"scratch copies kept in {parent}")
        else:
            shutil.rmtree(parent, ignore_errors=True)


@dataclass(frozen=True)
class StageRun:
    """One stage process: wall and CPU (user + system) seconds, peak RSS in MiB, its stdout
    and, if it failed, its error output."""

    wall: float
    cpu: float
    rss: float
    stdout: str
    error: str | None


def measure_stage(stage: str, cwd: Path, env: dict[str, str] | None = None) -> StageRun:
    """Run one stage and measure that process alone."""
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
        cpu = usage.ru_utime + usage.ru_stime
        return StageRun(wall, cpu, usage.ru_maxrss / 1024, out.read().decode(), error)


def run_stage(stage: str, cwd: Path, env: dict[str, str] | None = None) -> StageRun:
    """Run one stage; stop if it fails."""
    run = measure_stage(stage, cwd, env)
    if run.error is not None:
        raise SystemExit(f"stage {stage} failed:\n{run.error}")
    return run


def fit_seconds(train_stdout: str) -> float:
    """implicit's fit() time inside the train stage, as the stage prints it."""
    found = re.search(r"fit (\d+\.\d+)s", train_stdout)
    if not found:
        raise SystemExit(f"no fit time in the train stage's output:\n{train_stdout}")
    return float(found.group(1))


def scratch_repo(scale: float, parent: Path, overrides: dict[str, object] | None = None) -> Path:
    """A copy of the code and params.yaml with the shop scaled by `scale` (0.02 = a quick
    check, 10 = 1M users) and `overrides` ({"als.factors": 64}) applied."""
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
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in params or not isinstance(params[section], dict) or not name:
            raise SystemExit(f"error: --set {key}: no such section in params.yaml")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def baselines(repo: Path, repeat: int) -> dict[str, float]:
    """Time the library calls our stages wrap, on the same data, in this process."""
    from threadpoolctl import threadpool_limits

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
                wall = run_stage(stage, repo, {"RECSYS_BLAS_KERNEL": kernel}).wall
                times = best.setdefault(kernel, {})
                times[stage] = min(times.get(stage, float("inf")), wall)
    base = best[kernels[0]]
    print(f"\nBLAS kernels (best of {repeat}; ratio to {kernels[0]}):")
    print(f"{'kernel':<12}" + "".join(f"{s:>20}" for s in ("train", "evaluate", "export")))
    for kernel in kernels:
        cells = [f"{best[kernel][s]:8.2f} s ({best[kernel][s] / base[s]:4.2f}x)" for s in base]
        print(f"{kernel:<12}" + "".join(f"{c:>20}" for c in cells))


def driver_counts(repo: Path) -> dict[str, int]:
    """What each stage's cost follows, read from the scratch copy's outputs: events,
    (user, item) pairs, users, and the users evaluate scored (all with held-out pairs, or
    its `evaluate.max_users` sample)."""
    import pyarrow.parquet as pq

    params = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
    counts = {"events": int(params["interactions"]), "users": int(params["users"])}
    confidence = repo / "data" / "confidence.parquet"
    if confidence.is_file():
        counts["pairs"] = pq.ParquetFile(confidence).metadata.num_rows
    metrics = repo / "metrics" / "metrics.json"
    if metrics.is_file():
        counts["evaluated users"] = int(json.loads(metrics.read_text())["users"])
    return counts


def rows_of(stage: str, counts: dict[str, int]) -> int | None:
    """Rows a data stage produces or consumes: events for generate and confidence, pairs for
    matrix and mask."""
    if stage in ("generate", "confidence"):
        return counts["events"]
    if stage in ("matrix", "mask"):
        return counts.get("pairs")
    return None


def print_growth(results: dict[float, dict[str, StageRun]], counts: dict[float, dict]) -> None:
    """Each stage's step from one scale to the next: wall and memory ratios, the driver's
    ratio (`DRIVERS`, else events) and the exponent log(wall ratio) / log(driver ratio):
    1.0 is linear."""
    scales = sorted(results)
    for low, high in zip(scales, scales[1:], strict=False):
        print(f"\n== growth {low:g}x -> {high:g}x (exponent 1.0 = linear in the driver)")
        print(
            f"{'stage':<12}{'driver':>16}{'x driver':>10}{'x wall':>9}{'x CPU':>9}{'x MiB':>8}"
            f"{'exponent':>10}  verdict"
        )
        for stage in STAGES:
            if stage not in results[low] or stage not in results[high]:
                continue
            a, b = results[low][stage], results[high][stage]
            driver = DRIVERS.get(stage, "events")
            grow = counts[high][driver] / counts[low][driver]
            wall, cpu, mem = b.wall / a.wall, b.cpu / a.cpu, b.rss / a.rss
            exponent = math.log(wall) / math.log(grow) if grow > 1 else float("nan")
            ok = wall <= GROWTH_SLACK * grow and mem <= GROWTH_SLACK * grow
            print(
                f"{stage:<12}{driver:>16}{grow:>10.2f}{wall:>9.2f}{cpu:>9.2f}{mem:>8.2f}"
                f"{exponent:>10.2f}  {'linear or better' if ok else 'FASTER THAN LINEAR'}"
            )
        scored = [counts[s].get("evaluated users", 0) for s in (low, high)]
        users_grow = counts[high]["users"] / counts[low]["users"]
        if scored[0] and scored[1] and scored[1] / scored[0] < 0.8 * users_grow:
            print(
                f"(evaluate scored {scored[0]:,} then {scored[1]:,} users: a seeded sample, "
                "evaluate.max_users, at the larger scale)"
            )


def plot(results: dict[float, dict[str, StageRun]], path: Path) -> None:
    """Time and peak memory per stage against scale, log-log, as a PNG."""
    values = [
        {"scale": scale, "stage": stage, "measure": measure, "value": value}
        for scale, runs in results.items()
        for stage, run in runs.items()
        for measure, value in (("wall time (s)", run.wall), ("peak memory (MiB)", run.rss))
    ]
    plot_curves(values, "stage", STAGES, path)


def plot_curves(values: list[dict], legend: str, order: list[str], path: Path) -> None:
    """One log-log panel per `measure` of `value` against `scale`, a line per `legend`
    value, as a PNG (Vega-Lite, rendered by vl-convert, the renderer DVC's plots use)."""
    import vl_convert

    log = {"type": "log"}
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values},
        "facet": {"column": {"field": "measure", "type": "nominal", "title": None}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {
            "width": 320,
            "height": 260,
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": {"field": "scale", "type": "quantitative", "scale": log,
                      "title": "scale (x the article's shop)"},
                "y": {"field": "value", "type": "quantitative", "scale": log, "title": None},
                "color": {"field": legend, "type": "nominal", "sort": order},
            },
        },
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    print(f"\ncost curve written to {path}")


def stage_line(stage: str, run: StageRun, counts: dict[str, int]) -> str:
    rows = rows_of(stage, counts)
    rate = f"{rows / run.wall:>12,.0f}" if rows else ""
    return f"{stage:<12}{run.wall:>10.2f}{run.cpu:>10.2f}{run.rss:>10.0f}{rate}"


STAGE_HEAD = f"{'stage':<12}{'wall s':>10}{'CPU s':>10}{'peak MiB':>10}{'rows/s':>12}"


def save_json(path: Path, results: dict[float, dict[str, StageRun]], counts: dict) -> None:
    """Every scale's driver counts and stage figures, for `--from-json`."""
    data = {
        f"{scale:g}": {
            "counts": counts[scale],
            "stages": {
                s: {"wall": r.wall, "cpu": r.cpu, "peak_mib": r.rss} for s, r in runs.items()
            },
        }
        for scale, runs in results.items()
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_json(path: Path) -> tuple[dict[float, dict[str, StageRun]], dict[float, dict]]:
    data = json.loads(path.read_text())
    results = {
        float(scale): {
            stage: StageRun(f["wall"], f["cpu"], f["peak_mib"], "", None)
            for stage, f in entry["stages"].items()
        }
        for scale, entry in data.items()
    }
    return results, {float(scale): entry["counts"] for scale, entry in data.items()}


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`--set als.factors=64` pairs, values parsed as YAML (as `dvc exp run -S`)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"error: --set {item!r}; expected SECTION.KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a param at every scale (e.g. als.factors=64: 320 factors for 10M "
        "users need 12 GB of user factors alone)",
    )  # fmt: skip
    parser.add_argument(
        "--data-only", action="store_true", help="only generate/confidence/matrix/mask"
    )
    parser.add_argument(
        "--stages-only", action="store_true",
        help="only the stage table (no repeated train runs, baselines or latency): the cost "
        "curve at large scales",
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, help="write the cost curve PNG here")
    parser.add_argument("--json", type=Path, help="write every stage's figures here")
    parser.add_argument(
        "--from-json", type=Path, metavar="JSON",
        help="run nothing: print the tables (and --plot) from a file --json wrote",
    )  # fmt: skip
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
        parser.error(f"--scale must be at least 1, got {min(args.scale):g}")
    overrides = parse_overrides(args.overrides)
    if args.from_json:
        results, counts = load_json(args.from_json)
        for scale, runs in results.items():
            c = counts[scale]
            print(f"\n== scale {scale:g}x: {c['users']:,} users, {c['events']:,} events")
            print(STAGE_HEAD)
            for stage, run in runs.items():
                print(stage_line(stage, run, c))
        print_growth(results, counts)
        if args.plot:
            plot(results, args.plot)
        return
    results: dict[float, dict[str, StageRun]] = {}
    counts: dict[float, dict[str, int]] = {}
    with scratch_parent("recsys-bench-", args.keep) as parent:
        for scale in args.scale:
            repo = scratch_repo(scale, parent, overrides)
            stages = DATA_STAGES if args.data_only else STAGES
            gen = yaml.safe_load((repo / "params.yaml").read_text())["generate"]
            extra = f" ({', '.join(args.overrides)})" if args.overrides else ""
            print(
                f"\n== scale {scale:g}x: {gen['users']:,} users, {gen['interactions']:,} events"
                + extra,
                flush=True,
            )
            if args.kernels:
                for stage in DATA_STAGES:
                    run_stage(stage, repo)
                blas_cost(repo, args.kernels, args.repeat)
                continue
            print(STAGE_HEAD)
            runs = results[scale] = {}
            for stage in stages:
                run = runs[stage] = run_stage(stage, repo)
                counts[scale] = driver_counts(repo)
                print(stage_line(stage, run, counts[scale]), flush=True)
            data = sum(runs[s].wall for s in DATA_STAGES)
            print(f"{'data stages':<12}{data:>10.2f}")
            print(f"{'all stages':<12}{sum(r.wall for r in runs.values()):>10.2f}", flush=True)
            if args.data_only or args.stages_only:
                continue
            # fit() times swing by 20% between runs on 2 shared cores, so the overhead
            # is the stage's wall time minus its own fit(); best of --repeat runs
            fits = [(runs["train"].wall, fit_seconds(runs["train"].stdout))]
            for _ in range(args.repeat - 1):
                run = run_stage("train", repo)
                fits.append((run.wall, fit_seconds(run.stdout)))
            wall, fit_in_stage = min(fits, key=lambda r: r[0] - r[1])
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
                f"{runs['evaluate'].wall:.2f} s"
            )
            print(f"one recommendation from a loaded bundle: {recommend_latency(repo):.4f} ms")
        if len(results) > 1:
            print_growth(results, counts)
        if args.json:
            save_json(args.json, results, counts)
        if args.plot and results:
            plot(results, args.plot)


if __name__ == "__main__":
    main()
