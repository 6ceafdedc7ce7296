"""The CI gate (`recsys check-repro`) on a real reproduced copy: silent and 0 when the
committed results match, and on a mismatch a message that names what differs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import copy_reproduced, recsys, run, tool_env

pytestmark = pytest.mark.dvc


def check(repo: Path, rev: str = "HEAD") -> subprocess.CompletedProcess[str]:
    return recsys("check-repro", "--rev", rev, cwd=repo)


@pytest.fixture(scope="module")
def reproduced(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("gate") / "repo")


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


@pytest.mark.parametrize("rev", ["nosuchrev", "", "HEAD~1000", "v9.9.9"])
def test_a_revision_that_names_no_commit_fails_the_gate(reproduced: Path, rev: str) -> None:
    """The gate once compared with nothing on a bad --rev and passed an edited metric."""
    path = reproduced / "metrics/metrics.json"
    original = path.read_text()
    path.write_text(original.replace('"map_at_k": ', '"map_at_k": 1', 1))
    try:
        proc = check(reproduced, rev)
    finally:
        path.write_text(original)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stdout
    expected = (
        "expected a git revision such as HEAD"
        if rev in ("", "--all")
        else ("not a commit of this repository")
    )
    assert proc.stderr == f"error: --rev {rev!r}: {expected}\n"


def test_a_folder_that_is_no_repository_is_refused(tmp_path: Path) -> None:
    gone = recsys("check-repro", "--repo", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert (gone.returncode, gone.stderr) == (
        2,
        f"error: --repo {tmp_path / 'nowhere'}: no such directory\n",
    )
    plain = recsys("check-repro", cwd=tmp_path)
    assert (plain.returncode, plain.stderr) == (2, "error: --repo .: not a git repository\n")


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
