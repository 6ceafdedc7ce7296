"""The PR report script against a tiny git + DVC repository driven by the real CLIs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from recsys.bootstrap import interval
from recsys.commands.report import NOISE_CHECKED, Row, headline_rank, render_report
from tests.helpers import recsys, run

pytestmark = pytest.mark.dvc


DVC_YAML = """\
stages:
  evaluate:
    cmd: python -c "print('metrics are written by the test')"
    params:
      - als
    metrics:
      - metrics/metrics.json:
          cache: false
    plots:
      - metrics/ranking_at_k.csv:
          cache: false
plots:
  - Ranking by K:
      template: linear
      x: k
      y:
        metrics/ranking_at_k.csv: [map_at_k, recall_at_k]
"""

PARAMS = {"als": {"factors": 8, "regularization": 0.05}, "evaluate": {"k": 3}}

# map_at_k is deliberately not the first key, and a nested group sits between top-level ones:
# the report lists map_at_k first, then top-level metrics, then nested ones, each in file order.
BASE_METRICS = {
    "precision_at_k": 0.2,
    "baseline": {"map_at_k": 0.05, "precision_at_k": 0.1},
    "map_at_k": 0.10,
    "users": 50,
    "recall_at_k": 0.3,
}


def write_state(repo: Path, metrics: dict, params: dict, ranking: list[tuple]) -> None:
    """Write what a pipeline run would leave behind: metrics, params and the per-K table."""
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = ["k,map_at_k,recall_at_k"] + [",".join(map(str, row)) for row in ranking]
    (repo / "metrics" / "ranking_at_k.csv").write_text("\n".join(lines) + "\n")
    (repo / "params.yaml").write_text(
        "".join(
            f"{section}:\n" + "".join(f"  {key}: {value}\n" for key, value in values.items())
            for section, values in params.items()
        )
    )


def commit(repo: Path, message: str) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


@pytest.fixture(scope="module")
def pr_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repo whose base commit has map_at_k 0.10 and whose PR commit has 0.12 and factors 16."""
    repo = tmp_path_factory.mktemp("pr_repo")
    run(["git", "init", "-q", "-b", "main"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_state(repo, BASE_METRICS, PARAMS, [(1, 0.05, 0.1), (2, 0.08, 0.2), (3, 0.10, 0.3)])
    base = commit(repo, "base")
    pr_metrics = json.loads(json.dumps(BASE_METRICS))
    pr_metrics["map_at_k"] = 0.12
    pr_params = {**PARAMS, "als": {**PARAMS["als"], "factors": 16}}
    write_state(repo, pr_metrics, pr_params, [(1, 0.06, 0.1), (2, 0.09, 0.2), (3, 0.12, 0.3)])
    commit(repo, "pr")
    return repo, base


def report(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return recsys("report", *args, cwd=repo)


def table(markdown: str, heading: str) -> list[list[str]]:
    """Data rows of the tables under `heading` (folded ones too), as stripped cells."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [row for row in rows if row[0] not in ("Metric", "Param")]  # no header rows


@pytest.fixture(scope="module")
def pr_report(pr_repo: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report of the PR commit against the base, with the per-K plot when it can render."""
    repo, base = pr_repo
    out = tmp_path_factory.mktemp("report") / "report.md"
    plots = ["--plots-dir", str(out.parent / "p")] if find_spec("vl_convert") else []
    proc = report(repo, "--base", base, "--out", str(out), *plots)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return out


def test_metric_table_leads_with_map_at_k(pr_report: Path) -> None:
    metrics = table(pr_report.read_text(), "### Metrics")
    names = [row[0].strip("*") for row in metrics]
    assert names == [
        "map_at_k",
        "precision_at_k",
        "users",
        "recall_at_k",
        "baseline.map_at_k",
        "baseline.precision_at_k",
    ]
    # no per-user values nor intervals in this repository: the change cannot be judged
    assert metrics[0][1:] == ["0.1", "0.12", "+0.0200, unknown", "+20.00%"]
    assert metrics[1][1:] == ["0.2", "0.2", "0", "0%"]
    # what did not move is folded away under the changed rows
    assert "<details><summary>5 unchanged metrics</summary>" in pr_report.read_text()


def test_param_table_lists_only_the_changed_param(pr_report: Path) -> None:
    text = pr_report.read_text()
    assert table(text, "### Params") == [["als.factors", "8", "16", "+8", "+100.00%"]]
    assert "Changed: 1 of 6 metrics, 1 param." in text


def test_per_k_plot_is_rendered_and_embedded(pr_report: Path) -> None:
    pytest.importorskip("vl_convert", reason="vl-convert-python renders the per-K plot")
    text, folder = pr_report.read_text(), pr_report.parent / "p"
    assert "![Ranking by K](p/ranking_by_k.png)" in text
    assert (folder / "ranking_by_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[index.html](p/index.html)" in text
    assert (folder / "index.html").is_file()


def test_no_change_is_said_plainly(pr_repo: tuple[Path, str]) -> None:
    repo, _ = pr_repo
    proc = report(repo, "--base", "main", "--new", "HEAD")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## DVC report: `main` -> `HEAD`")
    assert "**No change**" in proc.stdout
    assert "No param changed." in proc.stdout
    assert all(row[3] == "0" for row in table(proc.stdout, "### Metrics"))


def test_unknown_base_is_one_error_line(pr_repo: tuple[Path, str], tmp_path: Path) -> None:
    repo, _ = pr_repo
    out = tmp_path / "report.md"
    proc = report(repo, "--base", "no-such-branch", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown git revision 'no-such-branch'"
    assert proc.stdout == ""
    assert not out.exists()


def test_git_repo_without_dvc_is_rejected(tmp_path: Path) -> None:
    run(["git", "init", "-q"], tmp_path)
    proc = report(tmp_path, "--base", "HEAD")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "not a DVC repository" in proc.stderr


# --------------------------------------------------------------------------- beyond noise

NOISE_DVC_YAML = DVC_YAML.replace(
    "    metrics:\n", "    outs:\n      - data/per_user.npz\n    metrics:\n", 1
)
N_USERS = 400


def write_run(repo: Path, ap: np.ndarray, test_md5: str, factors: int) -> None:
    """A run's metrics (with 95% intervals) and its DVC-tracked per-user values."""
    (repo / "data").mkdir(exist_ok=True)
    np.savez(
        repo / "data/per_user.npz", user=np.arange(ap.size, dtype=np.int32),
        ap=ap.astype(np.float32), ndcg=ap.astype(np.float32), k=np.array(3),
        test_md5=np.array(test_md5),
    )  # fmt: skip
    low, high = interval(ap, 1000, seed=0)
    metrics = {"map_at_k": round(float(ap.mean()), 6), "map_at_k_ci_low": round(float(low), 6),
               "map_at_k_ci_high": round(float(high), 6), "users": int(ap.size)}  # fmt: skip
    params = {**PARAMS, "als": {**PARAMS["als"], "factors": factors}}
    write_state(repo, metrics, params, [(1, 0.05, 0.1)])
    run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], repo)


@pytest.fixture(scope="module")
def noise_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base: per-user AP of 400 users; `paired`: the same users, each +0.01 or so (a small,
    consistent gain the two intervals cannot see); `resplit`: another held-out split."""
    repo = tmp_path_factory.mktemp("noise_repo")
    run(["git", "init", "-q", "-b", "main"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(NOISE_DVC_YAML)
    rng = np.random.default_rng(0)
    base = rng.random(N_USERS) * 0.4
    write_run(repo, base, "split-a", 8)
    commit(repo, "base")
    run(["git", "tag", "base"], repo)
    write_run(repo, base + 0.01 + rng.normal(0, 0.01, N_USERS), "split-a", 16)
    commit(repo, "paired")
    run(["git", "tag", "paired"], repo)
    write_run(repo, rng.random(N_USERS) * 0.4 + 0.01, "split-b", 16)
    commit(repo, "resplit")
    run(["git", "tag", "resplit"], repo)
    return repo


def test_a_small_consistent_gain_is_significant_when_paired(noise_repo: Path) -> None:
    proc = report(noise_repo, "--base", "base", "--new", "paired")
    assert proc.returncode == 0, proc.stderr
    cell = table(proc.stdout, "### Metrics")[0][3]
    assert re.fullmatch(r"\+0\.01\d\d \[\+0\.0\d+, \+0\.0\d+\], significant", cell), cell
    assert "95% paired bootstrap over the same 400 users" in proc.stdout
    # the runs' own intervals overlap: only the paired test can tell
    rows = {row[0]: row for row in table(proc.stdout, "### Metrics")}
    assert float(rows["map_at_k_ci_low"][2]) < float(rows["map_at_k_ci_high"][1])


def test_other_held_out_pairs_fall_back_to_the_two_intervals(noise_repo: Path) -> None:
    proc = report(noise_repo, "--base", "base", "--new", "resplit")
    assert proc.returncode == 0, proc.stderr
    cell = table(proc.stdout, "### Metrics")[0][3]
    assert re.fullmatch(r"[+-]0\.\d{4}, within noise", cell), cell
    assert "the two runs' 95% intervals" in proc.stdout and "overlap" in proc.stdout


def test_compare_takes_experiment_names(noise_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(noise_repo, repo)
    run(["git", "checkout", "-q", "-b", "work", "base"], repo)
    run([sys.executable, "-m", "dvc", "checkout", "-q", "--force"], repo)
    rng = np.random.default_rng(0)
    base = rng.random(N_USERS) * 0.4
    write_run(repo, base + 0.01 + rng.normal(0, 0.01, N_USERS), "split-a", 16)
    run([sys.executable, "-m", "dvc", "exp", "save", "-q", "-n", "wider"], repo)
    proc = recsys("compare", "base", "wider", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## DVC report: `base` -> `wider`")
    assert table(proc.stdout, "### Metrics")[0][3].endswith(", significant")
    bad = recsys("compare", "base", "nope", cwd=repo)
    assert bad.returncode == 2
    assert bad.stderr == "error: unknown git revision or experiment 'nope'\n"


def test_compare_refuses_a_missing_folder_in_one_line(noise_repo: Path, tmp_path: Path) -> None:
    """Each once gave a traceback: an --out folder that does not exist, a --repo that does not."""
    out = tmp_path / "missing" / "x.md"
    bad_out = recsys("compare", "base", "resplit", "--out", str(out), cwd=noise_repo)
    assert (bad_out.returncode, bad_out.stdout) == (2, "")
    assert bad_out.stderr == f"error: --out {out}: the folder {out.parent} does not exist\n"
    assert not out.parent.exists()
    gone = tmp_path / "nowhere"
    bad_repo = recsys("compare", "base", "resplit", "--repo", str(gone), cwd=tmp_path)
    assert bad_repo.returncode == 2
    assert bad_repo.stderr == f"error: --repo {gone}: no such directory\n"


def test_what_users_are_served_stands_next_to_the_model_metric() -> None:
    """`served.map_at_k` (the model plus the cold-start path) is a headline too: bold, kept in
    view when unchanged, and checked against noise like `map_at_k`."""
    rows = [
        Row("metrics/metrics.json", "recall_at_k", 0.3, 0.3),
        Row("metrics/metrics.json", "served.map_at_k", 0.15, 0.15),
        Row("metrics/metrics.json", "map_at_k", 0.14, 0.145),
    ]
    rows = sorted(rows, key=lambda row: headline_rank(row.name))
    assert [row.name for row in rows] == ["map_at_k", "served.map_at_k", "recall_at_k"]
    text = render_report("base", "new", rows, [])
    shown = text.split("<details>")[0]
    assert "| **map_at_k** |" in shown and "| **served.map_at_k** |" in shown
    assert "recall_at_k" not in shown
    assert NOISE_CHECKED["served.map_at_k"] == "served_ap"
