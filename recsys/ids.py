"""Id maps: row/column index <-> external USER_ID / ITEM_ID, and metadata aligned to them.

An id map is a one-column CSV whose line i+2 holds the external id of row/column i, so the
matrices stay plain integers and ids are stored once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import StageError
from recsys.io import write_csv


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

    A repeated id keeps its first row.
    """
    values = frame.drop_duplicates(key).set_index(key)[column]
    return values.reindex(np.asarray(ids, dtype=str)).fillna("").to_numpy(dtype=str)
