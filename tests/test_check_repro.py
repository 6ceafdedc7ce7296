"""The CI gate (scripts/check_repro.py) on a real reproduced copy: silent and 0 when the
committed results match, and on a mismatch a message that names what differs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_reproduced, run, tool_env

pytestmark = pytest.mark.dvc


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/check_repro.py", "--rev", "HEAD"],
        cwd=repo,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def reproduced(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    repo = copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("gate") / "repo")
    (repo / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts/check_repro.py", repo / "scripts/check_repro.py")
    return repo


def test_matching_results_pass(reproduced: Path) -> None:
    proc = check(reproduced)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "match the reproduction" in proc.stdout


def test_a_changed_metric_is_named_with_its_delta_and_the_same_platform(
    reproduced: Path,
) -> None:
    path = reproduced / "metrics/metrics.json"
    original = path.read_text()
    metrics = json.loads(original)
    metrics["map_at_k"] = round(metrics["map_at_k"] + 0.0005, 6)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (reproduced / "metrics/extra.csv").write_text("k\n1\n")
    try:
        proc = check(reproduced)
    finally:
        path.write_text(original)
        (reproduced / "metrics/extra.csv").unlink()
    assert proc.returncode == 1
    out = proc.stdout
    assert "metrics/metrics.json" in out and "metrics/extra.csv" in out
    assert "map_at_k: " in out and "(+0.0005," in out
    assert "platform: the same as the committed run's" in out
    assert "Traceback" not in proc.stderr


def test_another_blas_kernel_is_reported_as_a_platform_difference(reproduced: Path) -> None:
    """Forcing another kernel (`RECSYS_BLAS_KERNEL`) stands in for another machine."""
    env = tool_env() | {"RECSYS_BLAS_KERNEL": "Prescott"}
    for args in (["-f", "--single-item", "train"], []):  # evaluate and export follow train
        subprocess.run(["dvc", "repro", *args], cwd=reproduced, env=env, check=True, timeout=300)
    try:
        proc = check(reproduced)
    finally:
        run(["git", "checkout", "--", "."], reproduced)
        run(["dvc", "checkout", "-f"], reproduced)
    assert proc.returncode == 1
    assert "outputs whose hash differs: " in proc.stdout and "models/bundle" in proc.stdout
    assert "the platform differs from the committed run's:" in proc.stdout
    blas = next(line for line in proc.stdout.splitlines() if "blas: committed" in line)
    committed, here = blas.split(", here ")
    assert "Haswell" in committed and "Haswell" not in here  # OpenBLAS calls Prescott "Katmai"
