"""Global time split: one cutoff for everyone, no event after it in training, and the users
and items it cannot score counted, never silently dropped."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys.confidence import ConfidenceParams, aggregate
from recsys.errors import StageError
from recsys.io import load_csr
from recsys.split import (
    MaskParams,
    global_time_split,
    history_before,
    parse_cutoff,
    resolve_cutoff,
)
from tests.helpers import parse, run, set_params

WEIGHTS = ConfidenceParams(
    weights={"View": 1.0, "Purchase": 5.0}, aggregation="sum", log_epsilon=1.0
)


def events(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    frame = pd.DataFrame(rows, columns=["USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP"])
    for col in ["USER_ID", "ITEM_ID", "EVENT_TYPE"]:
        frame[col] = frame[col].astype("category")
    return pa.Table.from_pandas(frame, preserve_index=False)


def matrix_of(log: pa.Table) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The confidence matrix and id maps the confidence and matrix stages would build."""
    pairs = aggregate(log, WEIGHTS.weights, "sum", 1.0)
    users = pairs.user_ids.to_numpy(zero_copy_only=False).astype(str)
    items = pairs.item_ids.to_numpy(zero_copy_only=False).astype(str)
    m = sp.csr_matrix((pairs.confidence, (pairs.user, pairs.item)), shape=(users.size, items.size))
    return m, users, items


def pairs_of(m: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> dict:
    coo = m.tocoo()
    triples = zip(coo.row, coo.col, coo.data, strict=True)
    return {(users[r], items[c]): float(v) for r, c, v in triples}


LOG = events(
    [
        ("u1", "a", "View", 10),
        ("u1", "a", "Purchase", 60),  # after the cutoff: must not reach training
        ("u1", "b", "View", 70),  # first seen after: a test pair
        ("u1", "new", "View", 80),  # an item nobody saw before the cutoff: a counted miss
        ("u2", "b", "View", 20),
        ("u2", "a", "Purchase", 55),  # test pair for u2
        ("u3", "a", "View", 90),  # a user first seen after the cutoff: counted, left out
        ("u3", "b", "View", 95),
    ]
)


def test_cutoff_rule_on_a_tiny_log() -> None:
    matrix, users, items = matrix_of(LOG)
    history = history_before(LOG, 50, WEIGHTS, users, items)
    train, test, counts = global_time_split(matrix, history)
    # training holds only pre-cutoff events: u1/a is 1 (its later Purchase is the future)
    assert pairs_of(train, users, items) == {("u1", "a"): 1.0, ("u2", "b"): 1.0}
    assert pairs_of(test, users, items) == {("u1", "b"): 1.0, ("u1", "new"): 1.0, ("u2", "a"): 5.0}
    assert counts == {
        "cold_users": 1,
        "cold_user_pairs": 2,
        "cold_items": 1,
        "cold_item_test_pairs": 1,
    }
    assert train.shape == test.shape == matrix.shape and train.dtype == np.float32


def test_an_event_exactly_at_the_cutoff_is_the_future() -> None:
    matrix, users, items = matrix_of(LOG)
    train, test, _ = global_time_split(matrix, history_before(LOG, 20, WEIGHTS, users, items))
    assert pairs_of(train, users, items) == {("u1", "a"): 1.0}  # u2's event at 20 is after
    assert ("u2", "b") not in pairs_of(test, users, items)  # u2 has no history: left out


def reference(log: pd.DataFrame, cutoff: int) -> tuple[dict, dict]:
    """Straightforward pandas oracle: train = pre-cutoff sums; test = pairs whose first
    event is at or after the cutoff, of users with a pre-cutoff event."""
    w = log["EVENT_TYPE"].map(WEIGHTS.weights).astype(float)
    log = log.assign(W=w)
    before = log[log["TIMESTAMP"] < cutoff]
    train = before.groupby(["USER_ID", "ITEM_ID"], observed=True).W.sum().to_dict()
    first = log.groupby(["USER_ID", "ITEM_ID"], observed=True).TIMESTAMP.min()
    total = log.groupby(["USER_ID", "ITEM_ID"], observed=True).W.sum()
    warm = set(before.USER_ID)
    test = {p: total[p] for p, t in first.items() if t >= cutoff and p[0] in warm}
    return train, test


@pytest.mark.parametrize("quantile", [0.3, 0.8])
def test_no_leakage_against_a_reference(quantile: float) -> None:
    rng = np.random.default_rng(5)
    n = 4000
    frame = pd.DataFrame(
        {
            "USER_ID": [f"u{i}" for i in rng.integers(0, 300, n)],
            "ITEM_ID": [f"i{i}" for i in rng.integers(0, 120, n)],
            "EVENT_TYPE": rng.choice(["View", "Purchase"], n),
            "TIMESTAMP": rng.integers(0, 1000, n),
        }
    )
    log = events(list(frame.itertuples(index=False, name=None)))
    matrix, users, items = matrix_of(log)
    ts = frame.TIMESTAMP.to_numpy()
    cutoff = resolve_cutoff(quantile, ts)
    assert cutoff == np.sort(ts)[int(np.ceil(quantile * (n - 1)))]
    train, test, counts = global_time_split(
        matrix, history_before(log, cutoff, WEIGHTS, users, items)
    )
    want_train, want_test = reference(frame, cutoff)
    assert pairs_of(train, users, items) == pytest.approx(want_train)
    assert pairs_of(test, users, items) == pytest.approx(want_test)
    # leakage: every test pair's first event is at or after the cutoff, and no training
    # value includes an event at or after it
    first = frame.groupby(["USER_ID", "ITEM_ID"]).TIMESTAMP.min()
    assert all(first[p] >= cutoff for p in pairs_of(test, users, items))
    assert test.nnz > 0 and train.nnz > 0
    # what is left out adds up: every pair is in train, in test, or a cold user's
    after = matrix.nnz - train.nnz
    assert after == test.nnz + counts["cold_user_pairs"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.8, 0.8),
        ("2024-06-16", int(dt.datetime(2024, 6, 16, tzinfo=dt.UTC).timestamp())),
        ("2024-06-16T12:30:00", int(dt.datetime(2024, 6, 16, 12, 30, tzinfo=dt.UTC).timestamp())),
        (
            "2024-06-16T12:30:00+02:00",
            int(dt.datetime(2024, 6, 16, 10, 30, tzinfo=dt.UTC).timestamp()),
        ),
    ],
)
def test_cutoff_forms(value, expected) -> None:
    assert parse_cutoff(value) == expected
    params = parse(MaskParams.from_section, "mask", {"strategy": "global_time", "cutoff": value})
    assert params.cutoff == expected


@pytest.mark.parametrize("value", [None, 0.0, 1.0, 1, "yesterday", "2024-13-01", True])
def test_bad_cutoff_is_one_line_naming_the_key(value) -> None:
    with pytest.raises(StageError, match=r"mask.cutoff = .*; expected a quantile of event time"):
        parse(MaskParams.from_section, "mask", {"strategy": "global_time", "cutoff": value})


def test_other_strategies_ignore_the_cutoff() -> None:
    params = parse(MaskParams.from_section, "mask", {"strategy": "random", "cutoff": "junk"})
    assert params.cutoff is None


def test_mask_stage_global_time_in_a_dvc_copy(reproduced_copy: Path) -> None:
    """The stage end to end: `dvc repro` re-runs mask onwards, training holds no event at or
    after the cutoff, and metrics/split.json counts the cold users and items."""
    repo = reproduced_copy
    before = {p: (repo / p).read_bytes() for p in ("data/train.npz", "data/test.npz")}
    random_report = json.loads((repo / "metrics/split.json").read_text())
    assert random_report["strategy"] == "random" and random_report["test_pairs"] > 0
    set_params(repo, {"mask": {"strategy": "global_time", "cutoff": 0.75}})
    proc = run(["dvc", "repro"], repo)
    assert "Running stage 'mask'" in proc.stdout and "Running stage 'generate'" not in proc.stdout
    report = json.loads((repo / "metrics/split.json").read_text())
    assert report["strategy"] == "global_time"
    for key in ("cold_users", "cold_user_pairs", "cold_items", "cold_item_test_pairs"):
        assert isinstance(report[key], int) and report[key] >= 0
    assert report["cold_users"] > 0  # the shop keeps gaining users over its 90 days
    log = pd.read_csv(repo / "data/interactions.csv", dtype={"USER_ID": str, "ITEM_ID": str})
    first = log.groupby(["USER_ID", "ITEM_ID"]).TIMESTAMP.min()
    users = pd.read_csv(repo / "data/user_ids.csv", dtype=str).USER_ID.to_numpy()
    items = pd.read_csv(repo / "data/item_ids.csv", dtype=str).ITEM_ID.to_numpy()
    test = load_csr(repo / "data/test.npz").tocoo()
    firsts = first.loc[list(zip(users[test.row], items[test.col], strict=True))].to_numpy()
    assert (firsts >= report["cutoff_timestamp"]).all()
    assert report["test_pairs"] == test.nnz
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert metrics["users"] == report["test_users"]
    # back to random: the original split, byte for byte
    set_params(repo, {"mask": {"strategy": "random"}})
    run(["dvc", "repro"], repo)
    assert {p: (repo / p).read_bytes() for p in before} == before


def test_cutoff_outside_the_log_fails_and_keeps_outputs(reproduced_copy: Path) -> None:
    repo = reproduced_copy
    before = (repo / "data/train.npz").read_bytes()
    set_params(repo, {"mask": {"strategy": "global_time", "cutoff": "2000-01-01"}})
    proc = run(["dvc", "repro", "mask"], repo, check=False)
    assert proc.returncode != 0
    assert "mask.cutoff = 2000-01-01T00:00:00+00:00 leaves no pairs before it" in proc.stderr
    assert "Traceback" not in proc.stderr
    run(["dvc", "checkout", "data/train.npz"], repo)  # DVC removed it before the run
    assert (repo / "data/train.npz").read_bytes() == before
