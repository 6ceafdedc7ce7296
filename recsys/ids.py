"""Id maps: row/column index <-> external USER_ID / ITEM_ID, and metadata aligned to them.

An id map is a one-column CSV whose line i+2 holds the external id of row/column i, so the
matrices stay plain integers and ids are stored once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.errors import StageError
from recsys.io import write_csv

if TYPE_CHECKING:  # imported where used: the recommend CLI loads neither pandas nor pyarrow
    import pyarrow as pa

MAX_ID_LENGTH = 256
"""Longest USER_ID / ITEM_ID accepted, in characters (Amazon Personalize's limit).

Checked where ids enter the pipeline (the importer and the confidence stage), so no later
stage meets an id that makes a per-id array (the bundle's fixed-width ids) absurdly large.
"""


def check_id_length(path: Path | str, column: str, ids: Any, codes: np.ndarray) -> None:
    """Refuse an id longer than MAX_ID_LENGTH, naming the first line that holds one.

    `ids` are the distinct values (a dictionary or categories), `codes` each row's index
    into them (-1 for a missing value), so only the distinct ids are measured.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = ids if isinstance(ids, pa.Array) else pa.array(np.asarray(ids, dtype=object))
    lengths = pc.utf8_length(values.cast(pa.large_string())).to_numpy(zero_copy_only=False)
    too_long = lengths > MAX_ID_LENGTH
    if not too_long.any():
        return
    codes = np.asarray(codes)
    rows = np.flatnonzero((codes >= 0) & too_long[np.maximum(codes, 0)])
    if not rows.size:
        return
    row = int(rows[0])
    raise StageError(
        f"{path}: line {row + 2}: column {column} holds an id of "
        f"{int(lengths[codes[row]]):,} characters; expected at most {MAX_ID_LENGTH} "
        "(MAX_ID_LENGTH, Amazon Personalize's limit for USER_ID and ITEM_ID)"
    )


CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f]"
"""Characters no id may hold (C0/C1 controls, DEL): numpy's fixed-width ids drop trailing
NULs, so `u1` and `u1\\0` would become one id in the bundle, and a tab or newline breaks
every line-based tool that shows ids."""


def has_control_characters(values: pa.Array) -> np.ndarray:
    """One flag per (distinct) id: whether it holds a control character."""
    import pyarrow.compute as pc

    found = pc.match_substring_regex(values, CONTROL_CHARACTERS)
    return found.fill_null(False).to_numpy(zero_copy_only=False)


def describe_id(value: str) -> str:
    """An id shown in an error: escaped, so a NUL or newline is visible, and cut short."""
    return repr(value[:60]) + ("..." if len(value) > 60 else "")


# Arrow dictionary columns (ids read once per distinct value) for confidence and matrix.


def dictionary(column: pa.ChunkedArray) -> pa.Array:
    """The one dictionary of a dictionary-encoded column whose chunks share it (unified)."""
    import pyarrow as pa

    if column.num_chunks == 0:
        return pa.array([], pa.string())
    return column.chunk(0).dictionary


def codes(column: pa.ChunkedArray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Each row's index into `dictionary(column)`, for chunks start..stop."""
    chunks = column.chunks[start:stop]
    if not chunks:
        return np.empty(0, dtype=np.int32)
    return np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])


def sorted_ids(ids: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the ids sorted, each id's rank in that order). Arrow sorts UTF-8 bytes: code point
    order, the order of a sorted pandas categorical, so pair order and id maps are stable."""
    import pyarrow.compute as pc

    return in_order(ids, pc.array_sort_indices(ids).to_numpy())


def in_order(ids: pa.Array, order: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """(the ids taken in `order`, a sorting permutation; each id's rank in that order)."""
    import pyarrow as pa

    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return ids.take(pa.array(order)), rank


def save_ids(path: Path | str, column: str, ids: Any) -> None:
    """Id map as a one-column CSV (through the one CSV writer): line i+2 holds id i."""
    import pyarrow as pa

    values = ids if isinstance(ids, pa.Array) else pa.array(np.asarray(ids).astype(object))
    write_csv(pa.table({column: values.cast(pa.string())}), path)


def load_ids(path: Path | str, column: str) -> np.ndarray:
    import pandas as pd  # local: the recommend CLI loads no pandas

    try:
        # blank lines are ids too (row i is line i + 2), so none may be skipped
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the upstream stage first (dvc repro)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise StageError(f"{path}: not a one-column id map; re-run dvc repro") from None
    if list(frame.columns) != [column]:
        raise StageError(f"{path}: expected a single column '{column}'")
    return frame[column].to_numpy(dtype=str)


def read_id_table(path: Path | str, key: str, wanted: list[str]) -> Any:
    """The `key` column and whichever `wanted` columns exist, all as strings.

    Metadata files (items, users) are optional extras for evaluation, so a missing `wanted`
    column is not an error; a missing key column is.
    """
    import pandas as pd

    try:
        header = pd.read_csv(path, nrows=0).columns
        if key not in header:
            raise StageError(f"{path}: missing column {key}")
        cols = [key] + [c for c in wanted if c in header]
        return pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the generate stage first (dvc repro)") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def aligned(frame: Any, key: str, column: str, ids: np.ndarray) -> np.ndarray:
    """`column` values in the order of `ids` (matrix order); "" where an id is not listed.

    A repeated id keeps its first row. An object array in which equal values share one
    string: a few dozen personas over 10M users cost a pointer each, where a fixed-width
    unicode array would cost the longest persona (80 characters, 320 bytes) each, 3 GB.
    """
    import pandas as pd

    values = frame.drop_duplicates(key).set_index(key)[column]
    codes, labels = pd.factorize(values.reindex(np.asarray(ids, dtype=str)).fillna(""))
    return np.asarray(labels, dtype=object)[codes]


def aligned_columns(
    path: Path | str, key: str, wanted: list[str], ids: np.ndarray
) -> dict[str, np.ndarray]:
    """Each `wanted` column the file has, `aligned` to `ids`. The table is dropped on return:
    at 10M users it is a gigabyte that no later step needs."""
    frame = read_id_table(path, key, wanted)
    return {c: aligned(frame, key, c, ids) for c in wanted if c in frame}


# Catalogue column -> field of the bundle's item metadata (what a service shows per item).
ITEM_METADATA_COLUMNS = {
    "CATEGORY_L1": "category",
    "CATEGORY_L2": "style",
    "PRICE": "price",
    "PRODUCT_DESCRIPTION": "description",
}


def load_item_metadata(path: Path | str, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Item metadata aligned to `item_ids`, for the bundle: field -> array.

    Text fields ("" where unknown) and `price` as float64 (NaN where unknown or not a
    finite non-negative number). A missing catalogue, or columns it lacks or leaves blank
    everywhere (users' own logs), give fewer fields or none: metadata is optional.
    """
    import pandas as pd

    if not Path(path).is_file():
        return {}
    frame = read_id_table(path, "ITEM_ID", list(ITEM_METADATA_COLUMNS))
    fields: dict[str, np.ndarray] = {}
    for column, name in ITEM_METADATA_COLUMNS.items():
        if column not in frame:
            continue
        values = aligned(frame, "ITEM_ID", column, item_ids)
        if name == "price":
            numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(
                np.float64, copy=True
            )
            numbers[~np.isfinite(numbers) | (numbers < 0)] = np.nan
            if np.isfinite(numbers).any():
                fields[name] = numbers
        elif (values != "").any():
            fields[name] = values
    return fields
