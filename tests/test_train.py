"""Stage `train`: real implicit ALS fits on a small matrix, run in-process and as the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from recsys.errors import StageError
from recsys.families.als import AlsParams, fit_als
from recsys.families.base import loss_csv
from recsys.io import save_csr
from recsys.threads import cpu_budget, worker_threads
from tests.helpers import run_module

ALS = {
    "factors": 6,
    "regularization": 0.05,
    "alpha": 5.0,
    "iterations": 4,
    "use_cg": True,
    "random_state": 11,
}
RUNTIME = {"threads": 1}


def clustered_matrix(n_users: int = 300, n_items: int = 60, seed: int = 0) -> sp.csr_matrix:
    """Users pick 1-4 items, mostly from their own group of items (so ALS has signal)."""
    rng = np.random.default_rng(seed)
    groups = 6
    per_user = rng.integers(1, 5, n_users)
    rows = np.repeat(np.arange(n_users), per_user)
    own = (rows % groups) + groups * rng.integers(0, n_items // groups, rows.size)
    cols = np.where(rng.random(rows.size) < 0.8, own, rng.integers(0, n_items, rows.size))
    data = rng.integers(1, 6, rows.size).astype(np.float32)
    m = sp.csr_matrix((data, (rows, cols)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def project(tmp_path: Path, als: dict | None = None, runtime: dict | None = None) -> Path:
    """A minimal working directory for `python -m stages.train`: params + train matrix."""
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    save_csr(tmp_path / "data" / "train.npz", clustered_matrix())
    params = {
        "als": ALS if als is None else als,
        "runtime": RUNTIME if runtime is None else runtime,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run_train(cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("stages.train", cwd=cwd)


def test_fit_returns_float32_factors_of_the_right_shape() -> None:
    train = clustered_matrix()
    users, items, losses = fit_als(train, AlsParams(**ALS), threads=1, show_progress=False)
    assert users.dtype == np.float32 and items.dtype == np.float32
    assert users.shape == (300, 6) and items.shape == (60, 6)
    assert len(losses) == ALS["iterations"]
    # ALS decreases its objective; a fit that did nothing would leave it flat.
    assert losses[-1] < losses[0]


def test_loss_tracking_can_be_switched_off_without_changing_the_model() -> None:
    train = clustered_matrix()
    tracked = fit_als(train, AlsParams(**ALS), threads=1, show_progress=False)
    quiet = fit_als(train, AlsParams(**ALS, track_loss=False), threads=1, show_progress=False)
    np.testing.assert_array_equal(tracked[0], quiet[0])
    np.testing.assert_array_equal(tracked[1], quiet[1])
    assert quiet[2] == [] and loss_csv(quiet[2]) == "iteration,loss\n"


def test_thread_count_does_not_change_the_factors() -> None:
    train = clustered_matrix()
    one = fit_als(train, AlsParams(**ALS), threads=1, show_progress=False)
    two = fit_als(train, AlsParams(**ALS), threads=2, show_progress=False)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_stage_is_byte_identical_for_the_same_params(tmp_path: Path) -> None:
    repo = project(tmp_path)
    first = run_train(repo)
    assert first.returncode == 0, first.stderr
    assert "threads=1:" in first.stdout  # runtime.threads from params.yaml
    model = (repo / "models" / "als.npz").read_bytes()
    loss = (repo / "metrics" / "train_loss.csv").read_text()
    second = run_train(repo)
    assert second.returncode == 0, second.stderr
    assert (repo / "models" / "als.npz").read_bytes() == model
    assert (repo / "metrics" / "train_loss.csv").read_text() == loss

    with np.load(repo / "models" / "als.npz", allow_pickle=False) as saved:
        assert saved["user_factors"].dtype == np.float32
        assert saved["item_factors"].shape == (60, ALS["factors"])
    rows = loss.splitlines()
    assert rows[0] == "iteration,loss"
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 5)]
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])


def test_another_seed_gives_another_model(tmp_path: Path) -> None:
    a = project(tmp_path / "a")
    b = project(tmp_path / "b", {**ALS, "random_state": 12})
    assert run_train(a).returncode == 0
    assert run_train(b).returncode == 0
    assert (a / "models" / "als.npz").read_bytes() != (b / "models" / "als.npz").read_bytes()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("factors", 0, "als.factors = 0"),
        ("regularization", -1, "als.regularization = -1"),
        ("alpha", 0, "als.alpha = 0"),
        ("iterations", 1.5, "als.iterations = 1.5"),
        ("use_cg", "yes", "als.use_cg = 'yes'"),
        ("factor", 8, "unknown param als.factor"),
        # the thread count is a runtime knob now, so it is no `als.*` param any more
        ("threads", 1, "unknown param als.threads"),
        ("runtime.threads", -2, "runtime.threads = -2"),
        ("runtime.thread", 1, "unknown param runtime.thread"),
    ],
)
def test_bad_params_fail_in_one_line_and_keep_outputs(
    tmp_path: Path, key: str, value: object, needle: str
) -> None:
    repo = project(tmp_path)
    (repo / "models").mkdir()
    (repo / "models" / "als.npz").write_bytes(b"previous")
    if key.startswith("runtime."):
        bad = project(tmp_path, runtime={**RUNTIME, key.removeprefix("runtime."): value})
    else:
        bad = project(tmp_path, {**ALS, key: value})
    proc = run_train(bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert (repo / "models" / "als.npz").read_bytes() == b"previous"


def test_empty_training_matrix_is_a_one_line_error(tmp_path: Path) -> None:
    repo = project(tmp_path)
    save_csr(repo / "data" / "train.npz", sp.csr_matrix((5, 4), dtype=np.float32))
    proc = run_train(repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: data/train.npz: no training pairs; check mask.fraction and the input data"
    ]


def test_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_THREADS", raising=False)
    assert worker_threads(3) == 3
    assert worker_threads(0) == cpu_budget()
    monkeypatch.setenv("RECSYS_THREADS", "1")
    assert worker_threads(0) == 1
    assert worker_threads(2) == 2  # an explicit runtime.threads wins over the environment
    monkeypatch.setenv("RECSYS_THREADS", "many")
    with pytest.raises(StageError, match="RECSYS_THREADS"):
        worker_threads(0)


def test_loss_csv_format() -> None:
    assert loss_csv([0.5, 0.25]) == "iteration,loss\n1,0.5\n2,0.25\n"
