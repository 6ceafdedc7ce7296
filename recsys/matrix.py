"""The users x items matrix of confidences, with stable id maps.

Rows and columns follow the sorted external ids, so the same pairs always give the same
matrix and maps (DVC hashes stay stable). A second matrix with the same sparsity holds each
pair's last timestamp, for the time-based split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.paths import CONFIDENCE

COLUMNS = ["USER_ID", "ITEM_ID", "CONFIDENCE", "LAST_TIMESTAMP"]


def load_pairs(path: Path | str = CONFIDENCE) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=COLUMNS)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the confidence stage first (dvc repro)") from None
    except (OSError, ValueError, KeyError, pa.ArrowException):
        raise StageError(
            f"{path}: not a readable Parquet file with columns {', '.join(COLUMNS)}; "
            "re-run the confidence stage"
        ) from None


def build(pairs: pd.DataFrame) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    """Return (confidence CSR float32, last-seen CSR int64, user ids, item ids)."""
    if pairs.empty:
        raise StageError(f"{CONFIDENCE}: no (user, item) pairs; the event log is empty")
    user_ids, rows = factorise(pairs["USER_ID"], "USER_ID")
    item_ids, cols = factorise(pairs["ITEM_ID"], "ITEM_ID")
    shape = (len(user_ids), len(item_ids))
    confidence = sp.csr_matrix(
        (pairs["CONFIDENCE"].to_numpy(np.float32), (rows, cols)), shape=shape, dtype=np.float32
    )
    last_seen = sp.csr_matrix(
        (pairs["LAST_TIMESTAMP"].to_numpy(np.int64), (rows, cols)), shape=shape, dtype=np.int64
    )
    if confidence.nnz != len(pairs):
        raise StageError(f"{CONFIDENCE}: duplicate (USER_ID, ITEM_ID) pairs; re-run confidence")
    return confidence, last_seen, user_ids, item_ids


def factorise(values: pd.Series, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, each pair's index into them), like `np.unique(return_inverse)`.

    Each distinct id is stored and sorted once (a dictionary encoding), and each pair costs
    one integer: a fixed-width unicode array per pair would cost the longest id's length
    times the number of pairs. Arrow sorts UTF-8 bytes, which is code point order, the
    order `np.unique` gives, so the id maps are unchanged.
    """
    arrow = pa.array(values)  # zero-copy for pandas' Arrow-backed strings
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    encoded = arrow.cast(pa.large_string())
    if encoded.null_count:
        raise StageError(f"{CONFIDENCE}: a missing {column}; re-run the confidence stage")
    encoded = encoded.dictionary_encode()
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    ids = encoded.dictionary.take(order).to_numpy(zero_copy_only=False)
    return ids, rank[encoded.indices.to_numpy()]
