"""Markdown report of what a change does to the pipeline: metrics, params and the per-K plot.

CI posts it as the pull-request comment. Every number comes from DVC's own diff commands, run
as subprocesses, so the comment always agrees with what a reviewer gets from `dvc metrics diff`
and `dvc params diff` on their machine.

Next to the change of map_at_k (and ndcg_at_k) it says whether the change is beyond noise:
with both sides' per-user values (`data/per_user.npz`, fetched with `dvc get`) on the same
held-out pairs, a paired bootstrap over those users gives the change's 95% interval;
otherwise the two runs' own intervals (`*_ci_low` / `*_ci_high` in metrics.json) are compared,
which is coarser (overlapping intervals can hide a real, consistent gain).

    recsys report --base origin/main [--new REV] [--out report.md]
                  [--plots-dir report_plots [--plots-url URL]]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.bootstrap import paired_difference, verdict
from recsys.commands import CommandParser
from recsys.errors import EXIT_USER_ERROR

# What a reviewer reads first: the model's MAP@K (what `dvc exp show` sorts by), then what users
# are actually served (the model, and the cold-start path for users without history).
HEADLINES = ("map_at_k", "served.map_at_k")
WORKSPACE = "workspace"
PER_USER = "data/per_user.npz"
# metric name -> per-user array in PER_USER whose mean it is
NOISE_CHECKED = {
    "map_at_k": "ap",
    "ndcg_at_k": "ndcg",
    "served.map_at_k": "served_ap",
    "served.ndcg_at_k": "served_ndcg",
}
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


class ReportError(Exception):
    """A problem the user can fix (bad ref, not a DVC repo); shown as one line."""


@dataclass(frozen=True)
class Row:
    """One line of a diff table: a metric or param with its value on both sides."""

    path: str
    name: str
    old: Any
    new: Any


# --------------------------------------------------------------------------- formatting


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """Short, stable text for a table cell; `-` for a side where the value is absent."""
    if value is None:
        return "-"
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"`{value}`"


def format_change(old: Any, new: Any) -> tuple[str, str]:
    """Signed absolute and relative change; words instead of numbers when there is no pair."""
    if old is None and new is not None:
        return "added", "-"
    if new is None and old is not None:
        return "removed", "-"
    if not (_is_number(old) and _is_number(new)):
        return ("-", "-") if old == new else ("changed", "-")
    diff = new - old
    if diff == 0:
        return "0", "0%"
    absolute = f"{diff:+.6g}" if isinstance(diff, float) else f"{diff:+d}"
    relative = f"{diff / abs(old) * 100:+.2f}%" if old != 0 else "-"
    return absolute, relative


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _table(
    rows: list[Row], label: str, with_path: bool, noise: dict[str, Noise] | None = None
) -> list[str]:
    head = (["File"] if with_path else []) + [label, "Old", "New", "Change", "Change %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        absolute, relative = format_change(row.old, row.new)
        if noise and row.name in noise and row.old != row.new:
            absolute = noise[row.name].cell
        name = f"**{row.name}**" if row.name in HEADLINES else row.name
        cells = ([_escape(row.path)] if with_path else []) + [
            _escape(name),
            _escape(format_value(row.old)),
            _escape(format_value(row.new)),
            absolute,
            relative,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _changed(row: Row) -> bool:
    return row.old != row.new


@dataclass(frozen=True)
class Noise:
    """Whether one metric's change is beyond noise, and how that was decided."""

    change: float
    low: float | None  # the change's interval (paired), or None when judged by two intervals
    high: float | None
    verdict: str  # "significant" / "within noise" / "unknown"
    method: str  # one sentence for the report

    @property
    def cell(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.change:+.4f}, {self.verdict}"
        return f"{self.change:+.4f} [{self.low:+.4f}, {self.high:+.4f}], {self.verdict}"


def _load_per_user(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError):
        return None


def per_user_values(repo: Path, rev: str) -> dict[str, np.ndarray] | None:
    """A revision's `data/per_user.npz` (from the DVC cache or remote), or None when that
    revision has none (older pipeline, or not fetchable)."""
    if rev == WORKSPACE:
        path = repo / PER_USER
        return _load_per_user(path) if path.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "per_user.npz"
        try:
            _dvc(["get", ".", PER_USER, "--rev", rev, "-o", str(out), "--force"], repo)
        except ReportError:
            return None
        return _load_per_user(out)


def _same_users(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> bool:
    """Paired only on the same held-out pairs (same test split) and the same K."""
    keys = ("user", "test_md5", "k")
    if not all(k in old and k in new for k in keys):
        return False
    return (
        str(old["test_md5"]) == str(new["test_md5"])
        and int(old["k"]) == int(new["k"])
        and np.array_equal(old["user"], new["user"])
    )


def noise_checks(
    metrics: list[Row],
    old_users: dict[str, np.ndarray] | None,
    new_users: dict[str, np.ndarray] | None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Noise]:
    """For map_at_k and ndcg_at_k when they changed: a paired bootstrap over the same users
    if both sides' per-user values are there, else the two runs' own 95% intervals."""
    by_name = {row.name: row for row in metrics}
    paired = old_users is not None and new_users is not None and _same_users(old_users, new_users)
    out: dict[str, Noise] = {}
    for name, column in NOISE_CHECKED.items():
        row = by_name.get(name)
        if row is None or not (_is_number(row.old) and _is_number(row.new)) or row.old == row.new:
            continue
        change = float(row.new - row.old)
        if paired and column in old_users and column in new_users:  # type: ignore[operator]
            mean, low, high = paired_difference(
                new_users[column],
                old_users[column],
                samples,
                seed,  # type: ignore[index]
            )
            n = int(new_users["user"].size)  # type: ignore[index]
            method = (
                f"95% paired bootstrap over the same {n:,} users ({samples} resamples, seed {seed})"
            )
            out[name] = Noise(mean, low, high, verdict(low, high), method)
            continue
        bounds = [by_name.get(f"{name}_ci_{end}") for end in ("low", "high")]
        values = [(b.old, b.new) if b is not None else (None, None) for b in bounds]
        (old_low, new_low), (old_high, new_high) = values
        if not all(_is_number(v) for v in (old_low, new_low, old_high, new_high)):
            method = "no error bars on one side (metrics from before they were computed)"
            out[name] = Noise(change, None, None, "unknown", method)
            continue
        apart = new_low > old_high or old_low > new_high
        method = (
            f"the two runs' 95% intervals, [{old_low:.4f}, {old_high:.4f}] and "
            f"[{new_low:.4f}, {new_high:.4f}], {'do not overlap' if apart else 'overlap'} "
            "(no per-user values on both sides for the same users, so no paired test)"
        )
        out[name] = Noise(change, None, None, "significant" if apart else "within noise", method)
    return out


def render_report(
    base: str,
    new: str,
    metrics: list[Row],
    params: list[Row],
    plots: list[tuple[str, str]] | None = None,
    plots_page: str | None = None,
    noise: dict[str, Noise] | None = None,
) -> str:
    """Markdown for the comment: headline, metric table, param table, then the plots.

    `metrics` holds every metric (changed or not) in display order; `params` only the changed
    params. `plots` is (title, image path or URL) pairs; `plots_page` links the interactive page.
    `noise` says, per checked metric, whether its change is beyond noise.
    """
    changed_metrics = [row for row in metrics if _changed(row)]
    lines = [f"## DVC report: `{base}` -> `{new}`", ""]
    if not changed_metrics and not params:
        lines += ["**No change**: every metric and param is the same as on the base.", ""]
    else:
        n_params = f"{len(params)} param" + ("" if len(params) == 1 else "s")
        lines += [f"Changed: {len(changed_metrics)} of {len(metrics)} metrics, {n_params}.", ""]

    lines += ["### Metrics", ""]
    for name, check in (noise or {}).items():
        lines += [f"**{name}** {check.cell}: {check.method}.", ""]
    if metrics:
        with_path = len({row.path for row in metrics}) > 1
        # the headlines and whatever moved stay in view; the unchanged rest folds away
        shown = [row for row in metrics if row.name in HEADLINES or _changed(row)]
        folded = [row for row in metrics if row.name not in HEADLINES and not _changed(row)]
        lines += _table(shown, "Metric", with_path, noise)
        if folded:
            lines += ["", f"<details><summary>{len(folded)} unchanged metrics</summary>", ""]
            lines += _table(folded, "Metric", with_path)
            lines += ["", "</details>"]
    else:
        lines.append("No metrics found on either side.")
    lines.append("")

    lines += ["### Params", ""]
    if params:
        with_path = len({row.path for row in params}) > 1
        lines += _table(params, "Param", with_path)
    else:
        lines.append("No param changed.")
    lines.append("")

    if plots is not None:
        lines += ["### Per-K ranking quality", ""]
        if plots:
            for title, image in plots:
                lines += [f"![{title}]({image})", ""]
        else:
            lines += ["No per-K plot found (a `dvc.yaml` plot with `x: k`).", ""]
        if plots_page:
            lines += [f"Every plot, interactive: [index.html]({plots_page})", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- DVC and git


def _run(cmd: list[str], repo: Path) -> str:
    """Run a command in the repository; its own error line becomes the report's error."""
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ReportError(f"cannot run {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
        raise ReportError(f"`{' '.join(cmd[2:] if cmd[1:2] == ['-m'] else cmd)}`: {errors[-1]}")
    return proc.stdout


def _dvc(args: list[str], repo: Path) -> str:
    # The interpreter running this script has DVC installed; PATH may not list its `dvc`.
    return _run([sys.executable, "-m", "dvc", *args], repo)


def _dvc_json(args: list[str], repo: Path) -> dict[str, Any]:
    out = _dvc([*args, "--json"], repo)
    try:
        data = json.loads(out or "{}")
    except json.JSONDecodeError:
        raise ReportError(f"`dvc {' '.join(args)} --json` printed no JSON") from None
    return data if isinstance(data, dict) else {}


def check_repo(repo: Path, base: str, new: str) -> None:
    """Fail early with one clear line, before any DVC command prints its own noise."""
    if not repo.is_dir():
        raise ReportError(f"{repo}: no such directory")
    try:
        top = Path(_run(["git", "rev-parse", "--show-toplevel"], repo).strip()).resolve()
    except ReportError:
        raise ReportError(f"{repo}: not inside a git repository") from None
    here = repo.resolve()
    # DVC's own rule: a `.dvc` folder here or in a parent, inside the git work tree.
    if not any((d / ".dvc").is_dir() for d in [here, *here.parents] if d.is_relative_to(top)):
        raise ReportError(f"{repo}: not a DVC repository (run `dvc init` first)")
    for ref in (base, new):
        if ref == WORKSPACE:
            continue
        try:
            _run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], repo)
        except ReportError:
            raise ReportError(f"unknown git revision {ref!r}") from None


def _flatten(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a nested mapping in file order, as DVC names nested metrics."""
    if not isinstance(data, dict):
        return [prefix] if prefix else []
    keys: list[str] = []
    for key, value in data.items():
        keys += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def _file_order(repo: Path, path: str, rev: str) -> list[str]:
    """Metric names in the order the file lists them (DVC's JSON puts changed ones first)."""
    try:
        if rev == WORKSPACE:
            text = (repo / path).read_text(encoding="utf-8")
        else:
            text = _run(["git", "show", f"{rev}:{path}"], repo)
        return _flatten(json.loads(text))
    except (OSError, ReportError, json.JSONDecodeError):
        return []


def _revs(base: str, new: str) -> list[str]:
    return [base] if new == WORKSPACE else [base, new]


def metric_rows(repo: Path, base: str, new: str) -> list[Row]:
    """Every metric of both sides: the headline first, then top-level ones, then nested groups.

    Within each part the file's own order is kept, so related metrics stay side by side.
    """
    diff = _dvc_json(["metrics", "diff", *_revs(base, new), "--all"], repo)
    rows: list[Row] = []
    for path in sorted(diff):
        entries = diff[path]
        order = _file_order(repo, path, new) + _file_order(repo, path, base)
        rank = {name: i for i, name in reversed(list(enumerate(order)))}
        names = sorted(
            entries, key=lambda n: (headline_rank(n), "." in n, rank.get(n, len(rank)), n)
        )
        rows += [Row(path, n, entries[n].get("old"), entries[n].get("new")) for n in names]
    return sorted(rows, key=lambda row: headline_rank(row.name))


def headline_rank(name: str) -> int:
    return HEADLINES.index(name) if name in HEADLINES else len(HEADLINES)


def param_rows(repo: Path, base: str, new: str) -> list[Row]:
    """Only the params that differ; an unchanged knob is noise in a review."""
    diff = _dvc_json(["params", "diff", *_revs(base, new)], repo)
    return [
        Row(path, name, entry.get("old"), entry.get("new"))
        for path in sorted(diff)
        for name, entry in diff[path].items()
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "plot"


def per_k_plots(
    repo: Path, base: str, new: str, out_dir: Path
) -> tuple[list[tuple[str, Path]], Path]:
    """Render the plots drawn against K as PNG, plus DVC's interactive HTML page.

    A plot counts as per-K when its x field is `k`, so renaming a plot in dvc.yaml keeps working.
    """
    try:
        import vl_convert
    except ImportError:
        raise ReportError("--plots-dir needs vl-convert-python (see requirements.txt)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        page = pool.submit(
            _dvc, ["plots", "diff", *_revs(base, new), "--out", str(out_dir.resolve())], repo
        )
        data = _dvc_json(["plots", "diff", *_revs(base, new)], repo).get("data", {})
        page.result()
    images: list[tuple[str, Path]] = []
    for plot_id, renders in data.items():
        for render in renders:
            spec = render.get("content") if render.get("type") == "vega" else None
            if not isinstance(spec, dict):
                continue
            if spec.get("encoding", {}).get("x", {}).get("field") != "k":
                continue
            image = out_dir / f"{_slug(plot_id)}.png"
            image.write_bytes(vl_convert.vegalite_to_png(spec, scale=1.5))
            images.append((plot_id, image))
    return images, out_dir / "index.html"


# --------------------------------------------------------------------------- CLI


def build_report(
    repo: Path,
    base: str,
    new: str,
    plots_dir: Path | None = None,
    out: Path | None = None,
    plots_url: str | None = None,
) -> str:
    """Collect the diffs and render them; image links are relative to the report file."""
    check_repo(repo, base, new)
    # Each DVC command spends most of its time starting up: run them side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        metrics_job = pool.submit(metric_rows, repo, base, new)
        params_job = pool.submit(param_rows, repo, base, new)
        old_job = pool.submit(per_user_values, repo, base)
        new_job = pool.submit(per_user_values, repo, new)
        plots_job = (
            None if plots_dir is None else pool.submit(per_k_plots, repo, base, new, plots_dir)
        )
        metrics, params = metrics_job.result(), params_job.result()
        noise = noise_checks(metrics, old_job.result(), new_job.result())
        rendered = None if plots_job is None else plots_job.result()
    plots = page = None
    if rendered is not None:
        images, html = rendered
        anchor = out.resolve().parent if out is not None else Path.cwd()

        def rel(path: Path) -> str:
            return Path(os.path.relpath(path.resolve(), anchor)).as_posix()

        plots = [(title, rel(image)) for title, image in images]
        page = plots_url or (rel(html) if html.exists() else None)
    return render_report(base, new, metrics, params, plots, page, noise)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument(
        "--new", default=WORKSPACE, help="git revision to report on (default: the workspace)"
    )
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument(
        "--plots-dir", type=Path, help="also render the per-K plot (PNG + HTML) into this folder"
    )
    parser.add_argument(
        "--plots-url", help="link for the interactive plots page (default: its local path)"
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root")
    return parser.parse_args(argv)


def check_repo_dir(repo: Path) -> None:
    """Refuse a --repo that is not a folder before git or DVC run in it."""
    if not repo.is_dir():
        raise ReportError(f"--repo {repo}: no such directory")


def write_report(text: str, out: Path | None) -> None:
    """The report to stdout, or to `out` whole (a temp file renamed over it), never half."""
    if out is None:
        sys.stdout.write(text)
        return
    if not out.parent.is_dir():
        raise ReportError(f"--out {out}: the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"--out {out}: cannot write ({exc.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point: report to stdout or --out; one `error:` line and exit 2 on bad input."""
    args = parse_args(argv)
    try:
        check_repo_dir(args.repo)
        report = build_report(
            args.repo, args.base, args.new, args.plots_dir, args.out, args.plots_url
        )
        write_report(report, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
