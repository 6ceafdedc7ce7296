"""Results do not depend on the CPU's BLAS kernel: every stage process pins one kernel.

OpenBLAS picks a kernel per CPU and kernels round differently. Forcing a kernel with
OPENBLAS_CORETYPE stands in for running on another CPU: with the pin, train, evaluate and
export give byte-identical files under each of three; without it (`RECSYS_BLAS_KERNEL=native`) they
do not, which shows this test can fail.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.blas import cpu_flags, widest_kernel
from tests.helpers import ROOT, copy_reproduced

pytestmark = [
    pytest.mark.dvc,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="kernel pinning is x86-64 only"),
]

KERNELS = ("Prescott", "Haswell", "SkylakeX")
MODEL_OUTPUTS = (
    "models/als.npz",
    "metrics/train_loss.csv",
    "metrics/metrics.json",
    "metrics/ranking_at_k.csv",
    "models/bundle/model.npz",
    "data/per_user.npz",
    "models/bundle/recommendations.npz",
    "models/bundle/metadata.json",
)


def model_stages(repo: Path, **env: str) -> dict[str, str]:
    """Run train, evaluate and export in one fresh process (the kernel is chosen when it
    starts, as in each DVC stage process); md5 of each output they write."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "RECSYS"))}
    environment |= {"PYTHONPATH": str(repo), "RECSYS_THREADS": "1", **env}
    code = (
        "from recsys.cli import run_stage\n"
        "from stages import evaluate, export, train\n"
        "for stage in (train, evaluate, export):\n"
        "    run_stage(stage.main)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"under {env}: {proc.stderr}"
    return {p: hashlib.md5((repo / p).read_bytes()).hexdigest() for p in MODEL_OUTPUTS}


@pytest.fixture(scope="module")
def split_repo(
    reproduced_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return copy_reproduced(reproduced_template[0], tmp_path_factory.mktemp("blas") / "repo")


def test_pinned_kernel_gives_identical_outputs_under_every_forced_kernel(split_repo: Path) -> None:
    results = {kernel: model_stages(split_repo, OPENBLAS_CORETYPE=kernel) for kernel in KERNELS}
    reference = results[KERNELS[0]]
    for kernel, hashes in results.items():
        assert hashes == reference, f"{kernel} differs from {KERNELS[0]}"


def test_without_the_pin_kernels_differ(split_repo: Path, tmp_path: Path) -> None:
    """The control: the problem is real on this data, so the test above can fail.

    It needs two kernels that round differently and that this CPU can run: the oldest
    (Prescott, SSE3) and the widest this CPU has (SkylakeX with AVX-512, Haswell with AVX2).
    """
    widest = widest_kernel(cpu_flags())
    assert widest != "Prescott", "this CPU runs no kernel wider than SSE3"
    repo = tmp_path / "native"
    shutil.copytree(split_repo, repo)
    native = {
        kernel: model_stages(repo, OPENBLAS_CORETYPE=kernel, RECSYS_BLAS_KERNEL="native")
        for kernel in ("Prescott", widest)
    }
    assert native["Prescott"]["models/als.npz"] != native[widest]["models/als.npz"]


@pytest.mark.parametrize(
    ("flags", "kernel"),
    [
        ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2", "fma"}, "SkylakeX"),
        ({"avx2", "fma", "avx"}, "Haswell"),
        ({"avx512f", "avx2", "fma"}, "Haswell"),
        ({"avx", "sse4_2"}, "Sandybridge"),
        ({"sse4_2"}, "Nehalem"),
    ],
)
def test_the_control_only_forces_a_kernel_the_cpu_runs(flags: set[str], kernel: str) -> None:
    assert widest_kernel(frozenset(flags)) == kernel


STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_process_runs_the_pinned_kernel_on_one_blas_thread(stage: str) -> None:
    """Whatever a stage module imports first (mask imports numpy before recsys), OpenBLAS
    loads pinned and with a pool of one thread."""
    code = (
        f"import stages.{stage}, numpy, scipy.linalg\n"
        "from threadpoolctl import threadpool_info\n"
        "blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(sorted({i['architecture'] for i in blas}), sorted({i['num_threads'] for i in blas}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS", "OPENBLAS"))}
    env |= {"PYTHONPATH": str(ROOT), "OPENBLAS_CORETYPE": "Prescott"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['Haswell'] [1]"


def test_a_misspelt_kernel_is_one_line(tmp_path: Path) -> None:
    """OpenBLAS silently ignores an unknown core name; a stage refuses it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS")}
    env |= {"PYTHONPATH": str(ROOT), "RECSYS_BLAS_KERNEL": "Haswel"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.confidence"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: RECSYS_BLAS_KERNEL='Haswel'; expected native or an OpenBLAS core name such as "
        "Haswell or Nehalem\n"
    )
