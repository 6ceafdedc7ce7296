"""The users x items matrix of confidences, with stable id maps.

Rows and columns follow the sorted external ids, so the same pairs always give the same
matrix and maps (DVC hashes stay stable). A second matrix with the same sparsity holds each
pair's last timestamp, for the time-based split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.ids import codes, dictionary, sorted_ids
from recsys.paths import CONFIDENCE

COLUMNS = ["USER_ID", "ITEM_ID", "CONFIDENCE", "LAST_TIMESTAMP"]


def load_pairs(path: Path | str = CONFIDENCE) -> pa.Table:
    """The pairs as an Arrow table, ids read as Parquet stored them (dictionary-encoded), so
    no per-pair string is materialised."""
    try:
        table = pq.read_table(path, columns=COLUMNS, read_dictionary=["USER_ID", "ITEM_ID"])
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the confidence stage first (dvc repro)") from None
    except (OSError, ValueError, KeyError, pa.ArrowException):
        raise StageError(
            f"{path}: not a readable Parquet file with columns {', '.join(COLUMNS)}; "
            "re-run the confidence stage"
        ) from None
    return table


def build(pairs: pa.Table) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    """Return (confidence CSR float32, last-seen CSR int64, user ids, item ids)."""
    if pairs.num_rows == 0:
        raise StageError(f"{CONFIDENCE}: no (user, item) pairs; the event log is empty")
    user_ids, rows = factorise(pairs["USER_ID"], "USER_ID")
    item_ids, cols = factorise(pairs["ITEM_ID"], "ITEM_ID")
    shape = (len(user_ids), len(item_ids))
    confidence = sp.csr_matrix(
        (pairs["CONFIDENCE"].to_numpy().astype(np.float32, copy=False), (rows, cols)),
        shape=shape,
        dtype=np.float32,
    )
    last_seen = sp.csr_matrix(
        (pairs["LAST_TIMESTAMP"].to_numpy().astype(np.int64, copy=False), (rows, cols)),
        shape=shape,
        dtype=np.int64,
    )
    if confidence.nnz != pairs.num_rows:
        raise StageError(f"{CONFIDENCE}: duplicate (USER_ID, ITEM_ID) pairs; re-run confidence")
    return confidence, last_seen, user_ids, item_ids


def factorise(values: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, each pair's index into them), like `np.unique(return_inverse)`.

    `values` is text (Arrow, pandas or a sequence) or an Arrow dictionary column. Each
    distinct id is stored and sorted once (a dictionary encoding), and each pair costs one
    integer: a fixed-width unicode array per pair would cost the longest id's length times
    the number of pairs. Arrow sorts UTF-8 bytes, which is code point order, the order
    `np.unique` gives, so the id maps are unchanged.
    """
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(values)  # zero-copy for pandas' Arrow-backed strings
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    if values.null_count:
        raise StageError(f"{CONFIDENCE}: a missing {column}; re-run the confidence stage")
    if not pa.types.is_dictionary(values.type):
        values = values.cast(pa.large_string()).dictionary_encode()
    values = pa.table({column: values}).unify_dictionaries()[column]
    distinct = dictionary(values).cast(pa.large_string())
    rows = codes(values)
    used = np.flatnonzero(np.bincount(rows, minlength=len(distinct)))
    if used.size < len(distinct):  # a dictionary may hold values no pair uses
        remap = np.full(len(distinct), -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        distinct, rows = distinct.take(pa.array(used)), remap[rows]
    ids, rank = sorted_ids(distinct)
    return ids.to_numpy(zero_copy_only=False), rank[rows]
