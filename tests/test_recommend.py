"""Serving from a bundle: known users, unknown users, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.bundle import FALLBACK, PERSONALISED, build_bundle, load_bundle
from recsys.cli import run_stage
from recsys.errors import StageError
from recsys.fallback import ExportParams
from recsys.families.als import AlsModel
from recsys.io import write_npz
from recsys.recommend import main as recommend_main
from tests.helpers import ROOT, recsys

N_USERS, N_ITEMS, TOP_N, FALLBACK_SIZE = 60, 30, 8, 12
NO_HISTORY = "4"  # row 3: every pair held out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.1).astype(np.float32)
    dense[np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS] = 1
    dense[int(NO_HISTORY) - 1] = 0
    train = sp.csr_matrix(dense)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=6, iterations=3, random_state=0, num_threads=1)
        model.fit(train, show_progress=False)
    out = tmp_path_factory.mktemp("served") / "bundle"
    out.mkdir()
    build_bundle(
        out,
        AlsModel.from_factors(model.user_factors, model.item_factors, threads=1),
        train,
        np.array([str(i + 1) for i in range(N_USERS)]),
        np.array([f"sku-{i}" for i in range(N_ITEMS)]),
        np.array([f"c{i % 3}" for i in range(N_ITEMS)]),
        ExportParams(top_n=TOP_N, fallback_size=FALLBACK_SIZE),
        {},
    )
    return out


def test_known_user_gets_the_precomputed_list(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with np.load(bundle_dir / "recommendations.npz", allow_pickle=False) as data:
        expected = [f"sku-{i}" for i in data["items"][0, :5]]
    recs = bundle.recommend("1", 5)
    assert list(recs) == expected
    assert recs.source == PERSONALISED and not recs.is_fallback and recs.known


def test_unknown_and_history_less_users_get_the_labelled_fallback(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    unknown = bundle.recommend("no-such-user", 6)
    assert unknown.source == FALLBACK and unknown.is_fallback and not unknown.known
    assert list(unknown) == bundle.fallback[:6].tolist()
    assert len(set(unknown)) == 6
    empty = bundle.recommend(NO_HISTORY, 6)
    assert empty.is_fallback and empty.known
    assert list(empty) == list(unknown)


def test_n_is_validated(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.max_n == TOP_N
    assert len(bundle.recommend("2", TOP_N)) == TOP_N
    for bad in (0, -1, TOP_N + 1):
        with pytest.raises(StageError, match="n = "):
            bundle.recommend("2", bad)


def test_recommend_many_agrees_with_recommend(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    users = ["3", "nobody", NO_HISTORY, "1", "60"]
    items, fallback = bundle.recommend_many(users, 5)
    assert items.shape == (5, 5)
    assert fallback.tolist() == [False, True, True, False, False]
    for user, row in zip(users, items.tolist(), strict=True):
        assert [x for x in row if x] == list(bundle.recommend(user, 5))


def test_one_recommendation_takes_well_under_a_millisecond(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    users = [str(i) for i in range(1, N_USERS + 1)] * 50 + ["unknown"] * 500
    start = time.perf_counter()
    for user in users:
        bundle.recommend(user, TOP_N)
    per_call = (time.perf_counter() - start) / len(users)
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} us per recommendation"


# --------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return recsys("recommend", *args, cwd=ROOT)


def test_cli_known_and_unknown_users(bundle_dir: Path) -> None:
    known = cli("2", "-n", "3", "--bundle", str(bundle_dir), "--json")
    assert known.returncode == 0, known.stderr
    answer = json.loads(known.stdout)
    assert answer["source"] == PERSONALISED and len(answer["items"]) == 3

    unknown = cli("stranger", "-n", "3", "--bundle", str(bundle_dir))
    assert unknown.returncode == 0
    assert unknown.stdout.split() == load_bundle(bundle_dir).fallback[:3].tolist()
    assert "fallback" in unknown.stderr and "not in the bundle" in unknown.stderr


def broken_bundles(bundle_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle_dir, corrupt)
    (corrupt / "recommendations.npz").write_bytes(b"PK\x03\x04 truncated")
    no_meta = tmp_path / "no_meta"
    shutil.copytree(bundle_dir, no_meta)
    (no_meta / "metadata.json").unlink()
    return corrupt, no_meta


def test_a_file_changed_after_export_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    """A well-formed file that is not the one exported fails metadata.json's files_md5."""
    changed = tmp_path / "changed"
    shutil.copytree(bundle_dir, changed)
    with np.load(changed / "recommendations.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["items"] = np.ascontiguousarray(arrays["items"][:, ::-1])
    write_npz(changed / "recommendations.npz", **arrays)
    with pytest.raises(StageError, match="recommendations.npz: corrupt"):
        load_bundle(changed)


def test_cli_errors_are_one_line_with_non_zero_exit(bundle_dir: Path, tmp_path: Path) -> None:
    corrupt, _ = broken_bundles(bundle_dir, tmp_path)
    cases = {
        ("2", "-n", "ten", "--bundle", str(bundle_dir)): "invalid int",
        ("2", "--bundle", str(corrupt)): "recommendations.npz",
    }
    for args, message in cases.items():
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr
        assert proc.stdout == ""


def test_cli_main_rejects_bad_requests_in_one_line(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt, no_meta = broken_bundles(bundle_dir, tmp_path)
    cases = {
        ("2", "-n", "0", "--bundle", str(bundle_dir)): "positive integer",
        ("2", "-n", str(TOP_N + 1), "--bundle", str(bundle_dir)): "exceeds",
        ("2", "--bundle", str(tmp_path / "missing")): "no bundle directory",
        ("2", "--bundle", str(corrupt)): "recommendations.npz",
        ("2", "--bundle", str(no_meta)): "metadata.json",
        (): "expected one of: a user_id",
    }
    for args, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run_stage(lambda args=args: recommend_main(list(args)))
        assert exit_info.value.code == 2, args
        out, err = capsys.readouterr()
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err
        assert out == ""
