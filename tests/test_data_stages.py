"""Unit tests of the pure functions behind confidence, matrix and mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys import confidence
from recsys.confidence import ConfidenceParams, aggregate, load_events, write_pairs
from recsys.errors import StageError
from recsys.matrix import build, load_pairs
from recsys.split import MaskParams, random_split
from tests.helpers import parse

WEIGHTS = {"View": 1.0, "AddToCart": 2.0, "ViewCart": 3.0, "StartCheckout": 4.0, "Purchase": 5.0}


def events(rows: list[tuple[str, str, str, int]], chunk_rows: int | None = None) -> pa.Table:
    """An event table as `load_events` returns it: ids dictionary-encoded, one dictionary
    per column, in chunks of `chunk_rows` rows."""
    frame = pd.DataFrame(rows, columns=["USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP"])
    for col in ["USER_ID", "ITEM_ID", "EVENT_TYPE"]:
        frame[col] = frame[col].astype("category")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return pa.Table.from_batches(table.to_batches(max_chunksize=chunk_rows))


LOG = events(
    [
        ("u1", "a", "View", 10),
        ("u1", "a", "View", 20),
        ("u1", "a", "Purchase", 30),
        ("u1", "b", "AddToCart", 15),
        ("u2", "a", "ViewCart", 5),
    ]
)


def test_sum_aggregation_adds_weights_per_pair() -> None:
    pairs = aggregate(LOG, WEIGHTS, "sum", 1.0).to_frame().set_index(["USER_ID", "ITEM_ID"])
    assert pairs.loc[("u1", "a"), "CONFIDENCE"] == 1 + 1 + 5
    assert pairs.loc[("u1", "b"), "CONFIDENCE"] == 2
    assert pairs.loc[("u2", "a"), "CONFIDENCE"] == 3
    assert pairs.loc[("u1", "a"), "LAST_TIMESTAMP"] == 30
    assert pairs["CONFIDENCE"].dtype == np.float32
    assert len(pairs) == 3


def test_log_aggregation_damps_large_sums() -> None:
    pairs = aggregate(LOG, WEIGHTS, "log", 2.0).to_frame().set_index(["USER_ID", "ITEM_ID"])
    assert pairs.loc[("u1", "a"), "CONFIDENCE"] == pytest.approx(np.log1p(7 / 2), rel=1e-6)
    assert pairs.loc[("u1", "b"), "CONFIDENCE"] == pytest.approx(np.log1p(1.0), rel=1e-6)


def test_chunked_aggregation_matches_a_groupby(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks reduced on their own, then together: the same pairs, sums and maxima as one
    pandas groupby over all events, whatever the chunk size."""
    rng = np.random.default_rng(5)
    n = 3000
    types = list(WEIGHTS)
    rows = [
        (f"u{u}", f"i{i}", types[t], int(ts))
        for u, i, t, ts in zip(
            rng.integers(0, 300, n), rng.integers(0, 40, n), rng.integers(0, 5, n),
            rng.integers(0, 10**9, n), strict=True,
        )
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP"])
    frame["w"] = frame["EVENT_TYPE"].map(WEIGHTS)
    expected = (
        frame.groupby(["USER_ID", "ITEM_ID"], sort=True)
        .agg(CONFIDENCE=("w", "sum"), LAST_TIMESTAMP=("TIMESTAMP", "max"))
        .reset_index()
    )
    whole = aggregate(events(rows), WEIGHTS, "sum", 1.0).to_frame()
    monkeypatch.setattr(confidence, "CHUNK_ROWS", 257)
    chunked = aggregate(events(rows, chunk_rows=100), WEIGHTS, "sum", 1.0).to_frame()
    for got in (whole, chunked):
        assert got["USER_ID"].tolist() == expected["USER_ID"].tolist()
        assert got["ITEM_ID"].tolist() == expected["ITEM_ID"].tolist()
        np.testing.assert_array_equal(got["CONFIDENCE"], expected["CONFIDENCE"].astype(np.float32))
        np.testing.assert_array_equal(got["LAST_TIMESTAMP"], expected["LAST_TIMESTAMP"])


def test_confidence_file_has_the_bytes_pandas_wrote(tmp_path, monkeypatch) -> None:
    """The stage writes Arrow row groups itself; the file is the one `to_parquet` gave."""
    rows = [(f"u{k % 97}", f"i{k % 13}", "View", k) for k in range(2000)]
    pairs = aggregate(events(rows), WEIGHTS, "sum", 1.0)
    monkeypatch.setattr(confidence, "ROW_GROUP", 64)  # several row groups, as at 10x
    write_pairs(pairs, tmp_path / "ours.parquet")
    pairs.to_frame().to_parquet(
        tmp_path / "pandas.parquet", index=False, engine="pyarrow", compression="zstd",
        row_group_size=64,
    )  # fmt: skip
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "pandas.parquet").read_bytes()


def test_event_type_without_weight_is_named() -> None:
    with pytest.raises(StageError, match="'Purchase' has no weight"):
        aggregate(LOG, {k: v for k, v in WEIGHTS.items() if k != "Purchase"}, "sum", 1.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"weights": {"View": -1}}, "confidence.weights.View = -1"),
        ({"weights": WEIGHTS, "aggregation": "max"}, "confidence.aggregation = 'max'"),
        ({"weights": WEIGHTS, "log_epsilon": 0}, "confidence.log_epsilon = 0"),
        ({"weights": WEIGHTS, "weight": 1}, "unknown param confidence.weight"),
    ],
)
def test_bad_confidence_params(values: dict, message: str) -> None:
    with pytest.raises(StageError, match=message):
        parse(ConfidenceParams.from_section, "confidence", values)


def test_matrix_ids_are_sorted_and_stable() -> None:
    pairs = aggregate(LOG, WEIGHTS, "sum", 1.0).to_frame().sample(frac=1.0, random_state=3)
    matrix, last_seen, users, items = build(pa.Table.from_pandas(pairs, preserve_index=False))
    assert list(users) == ["u1", "u2"] and list(items) == ["a", "b"]
    assert matrix.dtype == np.float32 and sp.isspmatrix_csr(matrix)
    np.testing.assert_array_equal(matrix.toarray(), [[7, 2], [3, 0]])
    np.testing.assert_array_equal(last_seen.toarray(), [[30, 15], [5, 0]])


def random_matrix(seed: int = 0) -> sp.csr_matrix:
    return sp.random(300, 80, density=0.05, format="csr", dtype=np.float32, rng=seed) * 10


def test_random_split_partitions_the_pairs() -> None:
    matrix = random_matrix()
    train, test = random_split(matrix, 0.2, seed=1)
    assert train.shape == test.shape == matrix.shape
    assert test.nnz == round(0.2 * matrix.nnz)
    assert train.nnz + test.nnz == matrix.nnz
    assert (train.multiply(test)).nnz == 0  # no pair on both sides
    assert abs(train + test - matrix).max() == 0


def test_random_split_is_seeded() -> None:
    matrix = random_matrix()
    a = random_split(matrix, 0.2, seed=1)[1]
    b = random_split(matrix, 0.2, seed=1)[1]
    c = random_split(matrix, 0.2, seed=2)[1]
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fraction": 1.5}, r"mask.fraction = 1.5; expected a number in \(0, 1\)"),
        ({"fraction": 0}, "mask.fraction = 0"),
        ({"strategy": "users"}, "mask.strategy = 'users'; expected one of random, time"),
        ({"seed": "x"}, "mask.seed = 'x'; expected an integer"),
    ],
)
def test_bad_mask_params(values: dict, message: str) -> None:
    with pytest.raises(StageError, match=message):
        parse(MaskParams.from_section, "mask", values)


def test_ids_that_look_like_missing_values_are_kept(tmp_path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text(
        "ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT\n"
        "null,NA,View,1,No\nNaN,None,Purchase,2,\nnull,NA,View,3,No\n"
    )
    pairs = aggregate(load_events(str(path)), WEIGHTS, "sum", 1.0).to_frame()
    assert sorted(zip(pairs["USER_ID"], pairs["ITEM_ID"], strict=True)) == [
        ("NA", "null"),
        ("None", "NaN"),
    ]
    assert pairs["CONFIDENCE"].sum() == 1 + 1 + 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP\n", r"no events \(header only\)"),
        ("ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP\na,u1,View,1\na,,View,2\n", "line 3: blank USER_ID"),
        ("ITEM_ID,USER_ID,TIMESTAMP\na,u1,1\n", "not a readable event log with columns"),
        ("ITEM_ID,USER_ID,EVENT_TYPE,TIMESTAMP\na,u1,View,x\n", "TIMESTAMP must hold whole"),
    ],
)
def test_malformed_event_logs_are_one_line_errors(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text(text)
    with pytest.raises(StageError, match=message):
        load_events(str(path))


def test_infinite_weight_is_rejected() -> None:
    with pytest.raises(StageError, match=r"confidence.weights.View = inf; expected a"):
        parse(ConfidenceParams.from_section, "confidence", {"weights": {"View": float("inf")}})


def test_broken_confidence_file_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "c.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(StageError, match="not a readable Parquet file"):
        load_pairs(tmp_path / "c.parquet")
