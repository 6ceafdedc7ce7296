"""What a person sees while stages run: live training progress for `dvc exp show`, and one
summary line per stage (tested for every stage in tests/test_pipeline_dvc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.families.als import AlsParams, fit_als
from tests.test_train import ALS, clustered_matrix, project, run_train

OUTPUTS = ("models/als.npz", "metrics/train_loss.csv", "metrics/train.json")


def test_fit_reports_every_iteration_with_its_loss() -> None:
    seen: list[tuple[int, float | None]] = []
    _, _, losses = fit_als(
        clustered_matrix(), AlsParams(**ALS), 1, on_iteration=lambda i, loss: seen.append((i, loss))
    )
    assert [i for i, _ in seen] == list(range(1, ALS["iterations"] + 1))
    assert [loss for _, loss in seen] == losses


def test_fit_without_loss_reports_iterations_only() -> None:
    seen: list[tuple[int, float | None]] = []
    fit_als(
        clustered_matrix(),
        AlsParams(**ALS, track_loss=False),
        1,
        on_iteration=lambda i, loss: seen.append((i, loss)),
    )
    assert seen == [(i, None) for i in range(1, ALS["iterations"] + 1)]


def test_train_leaves_its_final_progress_in_train_json(tmp_path: Path) -> None:
    proc = run_train(project(tmp_path))
    assert proc.returncode == 0, proc.stderr
    progress = json.loads((tmp_path / "metrics/train.json").read_text())
    final_loss = float(
        (tmp_path / "metrics/train_loss.csv").read_text().splitlines()[-1].split(",")[1]
    )
    assert progress["iteration"] == progress["iterations"] == ALS["iterations"]
    assert np.isclose(progress["loss"], final_loss, rtol=1e-6)
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("train: ")
    assert proc.stderr == ""  # no progress bar in a log
    assert not list((tmp_path / "metrics").glob(".train.json.*")), "temp file left behind"


@pytest.mark.parametrize("track_loss", [True, False])
def test_a_failed_fit_is_one_line_and_leaves_the_previous_progress(
    tmp_path: Path, track_loss: bool
) -> None:
    """A NaN loss used to end in a traceback from the JSON writer, and a failed fit left a
    progress file that looked like a finished run."""
    repo = project(tmp_path)
    assert run_train(repo).returncode == 0
    before = {p: (repo / p).read_bytes() for p in OUTPUTS}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["als"] |= {"regularization": 1e25, "track_loss": track_loss}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_train(repo)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ALS failed") and proc.stderr.count("\n") == 1
    assert "als.regularization = 1e+25 is so large" in proc.stderr
    assert {p: (repo / p).read_bytes() for p in OUTPUTS} == before
    assert not list((repo / "metrics").glob(".*")), "temp file left behind"
