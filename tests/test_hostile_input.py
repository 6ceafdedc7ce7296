"""Hostile input: each defect hostile testing found is refused with one line, or fixed.

Absurd ids, endless or exploding files, overflowing weights, impossible params, a corrupt
bundle and a closed pipe: real files in tmp dirs, stages and scripts run as subprocesses
(with timeouts, so a regression fails instead of hanging).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
import yaml

from recsys.bundle import build_bundle, load_bundle
from recsys.commands import s3_dev
from recsys.confidence import ConfidenceParams, aggregate, load_events
from recsys.errors import StageError
from recsys.events import GZIP_FREE_BYTES, MAX_HEADER_BYTES, read_header, read_interactions
from recsys.fallback import ExportParams
from recsys.families.als import (
    MAX_FACTORS,
    AlsModel,
    AlsParams,
    fit_als,
    slow_fit_warning,
)
from recsys.ids import MAX_ID_LENGTH
from recsys.matrix import build, factorise
from recsys.params import Section
from recsys.split import MaskParams, split
from tests.helpers import RECSYS, recsys

ROOT = Path(__file__).resolve().parents[1]
HEADER = "ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT\n"


def run_module(
    module: str, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in `cwd`, as DVC runs a stage, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one `error: ...` line a refused command printed (and nothing else on stderr)."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def workdir(path: Path, **sections: dict) -> Path:
    """`path` holding the project's params.yaml with `sections` merged in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_log(path: Path, rows: list[tuple[str, str]], event: str = "View") -> Path:
    """An interactions CSV of (item, user) rows, one event each, one second apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{i},{u},{event},{1700000000 + n},No\n" for n, (i, u) in enumerate(rows))
    path.write_text(HEADER + body)
    return path


# --------------------------------------------------------------------------- 1. long ids


def test_matrix_memory_does_not_grow_with_the_longest_id() -> None:
    n = 20_000
    users = np.array([f"u{k % 2000}" for k in range(n)], dtype=object)
    users[5] = "x" * 10_000
    pairs = pd.DataFrame(
        {
            "USER_ID": users,
            "ITEM_ID": [f"i{k // 2000}" for k in range(n)],
            "CONFIDENCE": np.ones(n, np.float32),
            "LAST_TIMESTAMP": np.arange(n, dtype=np.int64),
        }
    )
    tracemalloc.start()
    try:
        matrix, _, user_ids, item_ids = build(pa.Table.from_pandas(pairs, preserve_index=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # fixed-width unicode per pair was 20,000 x 10,000 x 4 bytes = 800 MB
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert matrix.shape == (2001, 10) and "x" * 10_000 in set(user_ids)


def test_factorised_ids_keep_the_np_unique_order() -> None:
    """The id maps (and so every DVC hash downstream) are unchanged by the new factorising."""
    ids = ["b", "a", "B", "10", "9", "é", "e", "z", "ä", "😀", "a b", "ab", "a", "Z", "ß", "10"]
    values, codes = factorise(pd.Series(ids, dtype=object), "USER_ID")
    expected, inverse = np.unique(np.array(ids, dtype=str), return_inverse=True)
    assert values.tolist() == expected.tolist()
    np.testing.assert_array_equal(codes, inverse)


def test_import_refuses_an_id_over_max_id_length(tmp_path: Path) -> None:
    ok = "i" * MAX_ID_LENGTH
    path = write_log(tmp_path / "log.csv", [(ok, "u1"), ("a", "u2"), ("i" + ok, "u3")])
    with pytest.raises(StageError) as exc:
        read_interactions(path, log=lambda _: None)
    message = str(exc.value)
    assert message.startswith(f"{path}: line 4: column ITEM_ID")
    assert f"{MAX_ID_LENGTH + 1:,} characters" in message and str(MAX_ID_LENGTH) in message
    write_log(path, [(ok, "u1"), ("a", "u2")])
    assert read_interactions(path, log=lambda _: None).num_rows == 2  # the limit itself is fine


def test_confidence_refuses_a_hand_edited_long_id(tmp_path: Path) -> None:
    """data/interactions.csv is an output anyone can edit: the confidence stage checks too."""
    path = write_log(tmp_path / "interactions.csv", [("a", "u1"), ("b", "u1"), ("a", "u" * 300)])
    with pytest.raises(StageError) as exc:
        load_events(path)
    assert str(exc.value).startswith(f"{path}: line 4: column USER_ID holds an id of 300 ")
    assert f"at most {MAX_ID_LENGTH}" in str(exc.value)


# --------------------------------------------------------------------------- 2. files


def test_a_header_longer_than_the_cap_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP," + "x" * 200_000 + "\nu,i,View,1,\n")
    with pytest.raises(StageError, match=f"line 1 is longer than {MAX_HEADER_BYTES:,} bytes"):
        read_header(path)


def test_a_gzip_bomb_is_refused_early(tmp_path: Path) -> None:
    # concatenated gzip members are one gzip stream: 128 MiB of rows in ~300 KB
    member = gzip.compress(b"u1,i1,View,1700000000,No\n" * 40_000, compresslevel=9)
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(HEADER.encode()) + member * 128)
    start = time.monotonic()
    with pytest.raises(StageError, match=r"more than 100:1.*gzip bomb"):
        read_interactions(path, log=lambda _: None)
    assert time.monotonic() - start < 10
    # a small file of repeated lines (below GZIP_FREE_BYTES) is an ordinary log
    path.write_bytes(gzip.compress(HEADER.encode()) + member)
    assert GZIP_FREE_BYTES > 40_000 * 26
    assert read_interactions(path, log=lambda _: None).num_rows == 40_000


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    work = workdir(tmp_path, generate={"source": "files", "interactions_file": "events/log.csv"})
    (work / "events").mkdir()
    os.mkfifo(work / "events/log.csv")
    line = error_line(run_module("stages.generate", cwd=work, timeout=60))
    assert line == (
        "error: events/log.csv: is a FIFO (named pipe); expected a regular .csv or .csv.gz file"
    )
    assert not (work / "data").exists()


def test_a_link_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "zero.csv"
    link.symlink_to("/dev/zero")
    with pytest.raises(StageError, match="zero.csv: is a character device; expected a regular"):
        read_header(link)


# --------------------------------------------------------------------------- 3. weights


def test_a_huge_event_weight_is_refused_where_it_is_set() -> None:
    section = Section("confidence", {"weights": {"View": 1e38}, "aggregation": "sum"})
    with pytest.raises(StageError, match=r"confidence.weights.View = 1e\+38; expected a number"):
        ConfidenceParams.from_section(section)


def test_non_finite_confidences_are_refused_naming_the_pair(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", [("a", "u1"), ("b", "u2"), ("b", "u2")])
    with pytest.raises(StageError, match="pair USER_ID 'u2', ITEM_ID 'b' aggregates to .* inf"):
        aggregate(load_events(log), {"View": 3e38}, "sum", 1.0)  # 6e38 > float32's 3.4e38
    # through the stage: a denormal log_epsilon passes the params check, the sum does not
    work = workdir(tmp_path / "stage", confidence={"log_epsilon": 1e-320})
    (work / "data").mkdir()
    shutil.copy(log, work / "data/interactions.csv")
    line = error_line(run_module("stages.confidence", cwd=work))
    assert "pair USER_ID 'u1', ITEM_ID 'a' aggregates to a confidence of inf" in line
    assert not (work / "data/confidence.parquet").exists()


# --------------------------------------------------------------------------- 4. export


def test_export_top_n_above_the_catalogue_names_the_item_count(tmp_path: Path) -> None:
    work = workdir(tmp_path, export={"top_n": 10**9})
    (work / "data").mkdir()
    (work / "data/user_ids.csv").write_text("USER_ID\nu1\nu2\n")
    (work / "data/item_ids.csv").write_text("ITEM_ID\na\nb\nc\n")
    # no train.npz or model: the check comes before any of them is read
    line = error_line(run_module("stages.export", cwd=work))
    assert line == (
        "error: params.yaml: export.top_n = 1000000000; expected <= 3, "
        "the number of items in data/item_ids.csv"
    )


# --------------------------------------------------------------------------- 5. hints


def small_matrix() -> sp.csr_matrix:
    matrix = sp.random(300, 80, density=0.05, format="csr", dtype=np.float32, rng=0) * 10
    matrix.data = np.log1p(matrix.data)
    return matrix


def als(**overrides: object) -> AlsParams:
    values = dict(factors=8, regularization=0.01, alpha=40.0, iterations=2, use_cg=True)
    return AlsParams(**(values | {"random_state": 1, "track_loss": False} | overrides))


@pytest.mark.parametrize(
    ("overrides", "hint"),
    [
        ({"regularization": 1e30}, r"als.regularization = 1e\+30 is so large .* lower it"),
        ({"alpha": 1e10}, "lower als.alpha"),
        ({"alpha": 1e10, "use_cg": False}, "not positive definite.*lower als.alpha"),
        ({"regularization": 1e20, "use_cg": False}, "all-zero factors.*smaller als.reg"),
    ],
)
def test_a_failed_fit_hints_at_the_param_at_fault(overrides: dict, hint: str) -> None:
    with pytest.raises(StageError, match=hint) as exc:
        fit_als(small_matrix(), als(**overrides), threads=1, show_progress=False)
    assert "raise als.regularization" not in str(exc.value)


def test_min_history_too_large_names_the_param() -> None:
    matrix = small_matrix()
    last_seen = matrix.copy()
    last_seen.data = np.arange(matrix.nnz, dtype=np.float32)
    params = MaskParams(strategy="time", fraction=0.2, seed=7, last_n=0, min_history=1000)
    with pytest.raises(StageError, match="mask.min_history = 1000 leaves no user"):
        split(matrix, last_seen, params)


# --------------------------------------------------------------------------- 6. bundle


def tiny_bundle(tmp_path: Path) -> Path:
    """A real bundle from build_bundle: 40 users, 12 items, 4 factors."""
    rng = np.random.default_rng(0)
    train = sp.random(40, 12, density=0.3, format="csr", dtype=np.float32, rng=1)
    model = AlsModel.from_factors(rng.random((40, 4)), rng.random((12, 4)), threads=1)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    users = np.array([f"u{k}" for k in range(40)])
    items = np.array([f"i{k}" for k in range(12)])
    build_bundle(bundle, model, train, users, items, None, ExportParams(5, 5), {})
    return bundle


def test_a_truncated_model_npz_is_refused_by_recommend(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path)
    assert load_bundle(bundle).recommend("u1", 3)  # a sound bundle answers
    factors = bundle / "model.npz"
    factors.write_bytes(factors.read_bytes()[: factors.stat().st_size // 2])
    proc = recsys("recommend", "u1", "--bundle", str(bundle), cwd=tmp_path)
    line = error_line(proc)
    assert f"{factors}: corrupt" in line and proc.stdout == ""


# --------------------------------------------------------------------------- 7. factors


def test_factors_above_the_honest_limit_are_refused() -> None:
    values = {"regularization": 0.01, "alpha": 40, "iterations": 15, "use_cg": True}
    section = Section("als", {"factors": 4096, "random_state": 42} | values)
    with pytest.raises(StageError, match=rf"als.factors = 4096; expected .*\[1, {MAX_FACTORS}\]"):
        AlsParams.from_section(section)


def test_a_slow_fit_is_announced_with_an_estimate() -> None:
    default_scale = (100_000, 2_500)
    assert slow_fit_warning(default_scale, als(factors=200, iterations=15), threads=2) is None
    warning = slow_fit_warning(default_scale, als(factors=MAX_FACTORS, iterations=15), 2)
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"warning: als.factors = {MAX_FACTORS} on 100,000 x 2,500")
    assert "min per iteration" in warning


# --------------------------------------------------------------------------- 8. s3-dev


@pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("moto", "flask")),
    reason="moto's server is not installed",
)
def test_s3_dev_start_into_a_closed_pipe_still_configures_the_remote(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc/config").write_text(
        "[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://dev-bucket/store\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHON=sys.executable, PYTHONUNBUFFERED="1")  # every print reaches the pipe

    def s3dev(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", f"{RECSYS} s3-dev {command}"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    state = repo / ".dvc/tmp/s3-dev/state.json"
    try:
        start = s3dev(f"start --port {s3_dev.free_port()} | head -1")
        assert start.returncode == 0 and start.stderr == "", start.stderr
        assert start.stdout.startswith("s3-dev: started moto S3 server")
        endpoint = json.loads(state.read_text())["endpoint"]
        local = (repo / ".dvc/config.local").read_text()
        assert f"endpointurl = {endpoint}" in local  # the next push goes to moto, not AWS
        assert s3dev("status").returncode == 0
    finally:
        stop = s3dev("stop")
        if state.exists():  # stop failed: end the server this test started, by its pid
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
    assert stop.returncode == 0, stop.stderr
    down = s3dev("status")
    assert (down.returncode, down.stdout) == (3, "s3-dev: not running\n")


def test_numeric_looking_ids_stay_text(tmp_path: Path) -> None:
    """pandas' pyarrow engine read ids as integers, so users "007" and "7" became one."""
    log = tmp_path / "interactions.csv"
    log.write_text("USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP\n007,01,View,1\n7,1,View,2\n7,1,View,3\n")
    pairs = aggregate(load_events(log), {"View": 1.0}, "sum", 1.0).to_frame()
    assert pairs["USER_ID"].tolist() == ["007", "7"]
    assert pairs["ITEM_ID"].tolist() == ["01", "1"]
    assert pairs["CONFIDENCE"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("value", ["²", "0", "5000", "two"])
def test_recsys_threads_out_of_range_is_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.threads import worker_threads

    monkeypatch.setenv("RECSYS_THREADS", value)
    expected = r"^RECSYS_THREADS=.*; expected an integer in \[1, 1024\]$"
    with pytest.raises(StageError, match=expected):
        worker_threads()


def test_csv_values_that_need_quotes_round_trip(tmp_path: Path) -> None:
    """pandas 3 gives pyarrow large_string columns, which the quoting check used to skip."""
    from recsys.io import atomic_outputs, write_csv

    frame = pd.DataFrame({"ITEM_ID": ["a,b", 'say "hi"', "plain"], "N": [1, 2, 3]})
    with atomic_outputs():
        write_csv(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert back["ITEM_ID"].tolist() == frame["ITEM_ID"].tolist()


def test_a_bundle_whose_metadata_skips_a_file_is_refused(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path)
    meta = json.loads((bundle / "metadata.json").read_text())
    del meta["files_md5"]["recommendations.npz"]
    (bundle / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(
        StageError, match="files_md5 must list ids.npz, model.npz, recommendations.npz"
    ):
        load_bundle(bundle)
