"""Train/test splits of the confidence matrix: a random share of pairs, each user's latest,
or everything before one moment.

`random` holds out `mask.fraction` of all pairs, seeded, as the article does. `time` holds
out each user's most recent pairs: a random split lets the model peek at a user's future to
predict their past, while the latest pairs measure what production sees. Both choose a
boolean mask over the stored pairs and cut the matrix with the one routine `split_pairs`,
so train + test == matrix and no pair is in both.

`global_time` is what a deployed model faces: it trains on the events before one cutoff
(`mask.cutoff`, a date or a quantile of event time) and is scored on the pairs first seen
after it. `time` still trains on other users' future; this split does not. The training
confidences come from the pre-cutoff events alone (a pair bought again after the cutoff
trains with its earlier events only), so nothing after the cutoff reaches the model. Pairs
of users with no event before the cutoff cannot be scored by any trained model: they are
left out of both sides and counted (`split_report`), as are the items first seen after it,
whose test pairs stay in the test set as misses.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.confidence import ConfidenceParams, aggregate
from recsys.errors import StageError
from recsys.params import Section
from recsys.paths import INTERACTIONS, LAST_SEEN, MATRIX

STRATEGIES = ["random", "time", "global_time"]
CUTOFF_EXPECTED = (
    "a quantile of event time in (0, 1) such as 0.8, or a quoted UTC date or time such as "
    '"2024-06-16" or "2024-06-16T12:00:00"'
)


@dataclass(frozen=True)
class MaskParams:
    """`mask:` params (`seed` is used by `random`; `last_n`, `min_history` by `time`;
    `cutoff` by `global_time`: a float quantile or epoch seconds from a date)."""

    strategy: str
    fraction: float
    seed: int
    last_n: int
    min_history: int
    cutoff: float | int | None = None

    @classmethod
    def from_section(cls, s: Section) -> MaskParams:
        strategy = s.choice("strategy", STRATEGIES, "random")
        cutoff = None
        if strategy == "global_time":
            cutoff = parse_cutoff(s.raw("cutoff", None))
        else:
            s.ignore(("cutoff",))
        return cls(
            strategy=strategy,
            fraction=s.float("fraction", 0.2, min=0, max=1, min_exclusive=True, max_exclusive=True),
            seed=s.int("seed", 7, min=0),
            last_n=s.int("last_n", 0, min=0),
            min_history=s.int("min_history", 2, min=2),
            cutoff=cutoff,
        )


def parse_cutoff(value: Any) -> float | int:
    """`mask.cutoff` as a quantile (float in (0, 1)) or epoch seconds (int, from a UTC date).

    A date without a time means its midnight UTC; an offset in the text is honoured.
    """
    fail = StageError(f"params.yaml: mask.cutoff = {value!r}; expected {CUTOFF_EXPECTED}")
    if isinstance(value, float) and 0 < value < 1:
        return value
    if not isinstance(value, str):
        raise fail
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def resolve_cutoff(cutoff: float | int, timestamps: np.ndarray) -> int:
    """Epoch seconds of the cutoff: a date as given; a quantile q as the event time at
    position ceil(q * (n - 1)) of the sorted times (numpy's "higher" quantile), so about
    q of the events fall strictly before it."""
    if isinstance(cutoff, float):
        return int(np.quantile(timestamps, cutoff, method="higher"))
    return int(cutoff)


def split(
    matrix: sp.csr_matrix, last_seen: sp.csr_matrix | None, params: MaskParams
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(train, test) by `params.strategy`; `last_seen` is needed by the time split only."""
    if params.strategy == "random":
        return random_split(matrix, params.fraction, params.seed)
    if params.strategy == "global_time":
        raise ValueError("global_time needs the events: call global_time_split")
    train, test = time_split(
        matrix,
        last_seen,
        fraction=None if params.last_n else params.fraction,
        last_n=params.last_n or None,
        min_history=params.min_history,
    )
    if test.nnz == 0:
        users = int(np.count_nonzero(np.diff(matrix.indptr) >= params.min_history))
        raise StageError(
            f"params.yaml: mask.min_history = {params.min_history} leaves no user to hold "
            f"pairs out for ({users} users have that many pairs); expected a smaller "
            "mask.min_history"
        )
    return train, test


def split_pairs(matrix: sp.csr_matrix, held_out: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Cut a CSR matrix by a boolean mask over its stored entries (True = held out).

    Built directly in CSR form: both parts keep the matrix's shape and dtype.
    """
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = _entry_rows(matrix)
    return _pick(matrix, rows, ~held_out), _pick(matrix, rows, held_out)


def random_split(
    matrix: sp.csr_matrix, fraction: float, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out round(fraction * nnz) pairs chosen uniformly at random (seeded)."""
    n_test = int(round(fraction * matrix.nnz))
    if n_test == 0 or n_test == matrix.nnz:
        raise StageError(
            f"params.yaml: mask.fraction = {fraction} holds out {n_test} of {matrix.nnz} pairs; "
            "expected a split with pairs on both sides"
        )
    rng = np.random.default_rng(seed)
    held_out = np.zeros(matrix.nnz, dtype=bool)
    held_out[rng.choice(matrix.nnz, size=n_test, replace=False)] = True
    return split_pairs(matrix, held_out)


def time_split(
    matrix: sp.csr_matrix,
    last_seen: sp.csr_matrix,
    *,
    fraction: float | None,
    last_n: int | None,
    min_history: int,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split `matrix` into (train, test) by the pairs' last timestamps in `last_seen`.

    Every user with at least `min_history` pairs holds out either round(fraction * pairs)
    (half up, at least 1) or `last_n` of their most recent pairs, capped at pairs - 1.
    Equal timestamps are ordered by item index (the higher index counts as more recent), so
    the split is deterministic. Both results have the shape of `matrix`, no pair is in both,
    and train + test == matrix.
    """
    if (fraction is None) == (last_n is None):
        raise ValueError("give exactly one of fraction and last_n")
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if last_n is not None and last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1, got {min_history}")

    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.sort_indices()
    last_seen = sp.csr_matrix(last_seen, copy=True)
    last_seen.sort_indices()
    if (
        last_seen.shape != matrix.shape
        or not np.array_equal(last_seen.indptr, matrix.indptr)
        or not np.array_equal(last_seen.indices, matrix.indices)
    ):
        raise StageError(
            f"{LAST_SEEN}: its non-zero pairs differ from {MATRIX}; expected the "
            "same pairs (re-run the matrix stage: dvc repro matrix)"
        )

    n_rows = matrix.shape[0]
    counts = np.diff(matrix.indptr)
    rows = _entry_rows(matrix)
    # Rows stay contiguous in this order, so position p in it still belongs to rows[p].
    order = np.lexsort((matrix.indices, last_seen.data, rows))
    newer = matrix.indptr[rows + 1] - 1 - np.arange(matrix.nnz)  # pairs more recent than p

    if fraction is not None:
        held = np.floor(fraction * counts + 0.5).astype(np.int64)
    else:
        held = np.full(n_rows, last_n, dtype=np.int64)
    held = np.clip(held, 1, np.maximum(counts - 1, 0))
    held[counts < min_history] = 0

    is_test = np.empty(matrix.nnz, dtype=bool)
    is_test[order] = newer < held[rows]
    return split_pairs(matrix, is_test)


def global_time_split(
    matrix: sp.csr_matrix, history: sp.csr_matrix
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict[str, int]]:
    """(train, test, counts) of a global time split.

    `history` holds the confidences aggregated from the events before the cutoff, in the
    matrix's rows and columns; its pairs are a subset of the matrix's. Train is `history`.
    Test holds the matrix's pairs with no event before the cutoff (first seen after it),
    for the users with at least one pair in `history`; their values are the matrix's, which
    for such pairs come from post-cutoff events only. The counts say what was left out:
    `cold_users` (a pair after the cutoff and none before) and their `cold_user_pairs`,
    `cold_items` (first seen after the cutoff) and `cold_item_test_pairs`, the test pairs on
    them (kept in test: no trained model can rank them, so they score as misses).
    """
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    history = sp.csr_matrix(history, dtype=matrix.dtype)
    history.sort_indices()
    history.eliminate_zeros()
    if history.shape != matrix.shape:
        raise ValueError(f"history shape {history.shape} differs from matrix {matrix.shape}")
    n_cols = np.int64(matrix.shape[1])
    rows = _entry_rows(matrix)
    keys = rows * n_cols + matrix.indices
    history_keys = _entry_rows(history) * n_cols + history.indices
    found = np.searchsorted(keys, history_keys)
    if history.nnz and (found.max() >= keys.size or (keys[found] != history_keys).any()):
        raise StageError(f"events before the cutoff hold pairs that are not in {MATRIX}")
    seen_before = np.zeros(matrix.nnz, dtype=bool)
    seen_before[found] = True
    warm_user = np.diff(history.indptr) > 0
    after = ~seen_before
    is_test = after & warm_user[rows]
    test = _pick(matrix, rows, is_test)
    active = np.diff(matrix.indptr) > 0
    warm_item = np.bincount(history.indices, minlength=matrix.shape[1]) > 0
    item_used = np.bincount(matrix.indices, minlength=matrix.shape[1]) > 0
    counts = {
        "cold_users": int(np.count_nonzero(active & ~warm_user)),
        "cold_user_pairs": int(np.count_nonzero(after & ~warm_user[rows])),
        "cold_items": int(np.count_nonzero(item_used & ~warm_item)),
        "cold_item_test_pairs": int(np.count_nonzero(~warm_item[test.indices])),
    }
    return history, test, counts


def history_before(
    events: pa.Table,
    cutoff: int,
    confidence: ConfidenceParams,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> sp.csr_matrix:
    """Confidences aggregated from the events strictly before `cutoff` (epoch seconds),
    the confidence stage's own way, in the rows and columns of the id maps."""
    before = events.filter(pc.less(events["TIMESTAMP"], cutoff))
    shape = (user_ids.size, item_ids.size)
    if before.num_rows == 0:
        return sp.csr_matrix(shape, dtype=np.float32)
    pairs = aggregate(before, confidence.weights, confidence.aggregation, confidence.log_epsilon)
    rows = _positions(user_ids, pairs.user_ids, "USER_ID")[pairs.user]
    cols = _positions(item_ids, pairs.item_ids, "ITEM_ID")[pairs.item]
    return sp.csr_matrix((pairs.confidence, (rows, cols)), shape=shape, dtype=np.float32)


def _positions(ids: np.ndarray, wanted: pa.Array, column: str) -> np.ndarray:
    """Index of each of `wanted` in the sorted id map `ids`."""
    names = np.asarray(wanted.to_numpy(zero_copy_only=False), dtype=ids.dtype)
    pos = np.minimum(np.searchsorted(ids, names), max(ids.size - 1, 0))
    if ids.size == 0 or (ids[pos] != names).any():
        raise StageError(
            f"{INTERACTIONS}: a {column} missing from the id maps; re-run dvc repro matrix"
        )
    return pos


def split_report(
    params: MaskParams, train: sp.csr_matrix, test: sp.csr_matrix, extra: dict[str, Any]
) -> dict[str, Any]:
    """What the split holds, for metrics/split.json; the test-side cold counts apply to
    every strategy (a random split can hold out all of a user's pairs too)."""
    train_users = np.diff(train.indptr) > 0
    test_rows = np.diff(test.indptr) > 0
    train_items = np.bincount(train.indices, minlength=train.shape[1]) > 0
    return {
        "strategy": params.strategy,
        "train_pairs": int(train.nnz),
        "test_pairs": int(test.nnz),
        "test_users": int(np.count_nonzero(test_rows)),
        "test_users_without_train": int(np.count_nonzero(test_rows & ~train_users)),
        "test_pairs_on_items_without_train": int(np.count_nonzero(~train_items[test.indices])),
    } | extra


def _entry_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """The row of every stored entry, in storage order."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def _pick(matrix: sp.csr_matrix, rows: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """Sub-matrix of the stored entries where `keep` holds, built directly in CSR form."""
    indptr = np.zeros(matrix.shape[0] + 1, dtype=matrix.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=matrix.shape[0]), out=indptr[1:])
    return sp.csr_matrix(
        (matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape, dtype=matrix.dtype
    )
