"""Confidence: one value per (user, item) pair from a log of typed events.

Implicit feedback has no ratings, so each event type gets a weight (params
`confidence.weights`) and the weights of a pair's events are aggregated: `sum` is the
article's choice; `log` (log1p(sum / epsilon), Hu, Koren & Volinsky 2008) damps heavy
repeat viewers so one obsessive user cannot dominate an item's factors. The last timestamp
of each pair is kept for the time-based split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.errors import StageError
from recsys.ids import (
    MAX_ID_LENGTH,
    check_id_length,
    codes,
    describe_id,
    dictionary,
    has_control_characters,
    sorted_ids,
)
from recsys.io import atomic_path
from recsys.params import Section
from recsys.paths import CONFIDENCE, INTERACTIONS

if TYPE_CHECKING:
    import pandas as pd

AGGREGATIONS = ["sum", "log"]
# A weight is a relative importance. Beyond a 1e6 ratio float32 confidences (24-bit
# mantissa) lose the small weights entirely, and near 3.4e38 they overflow to inf.
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
COLUMNS = ["USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP"]
CHUNK_ROWS = 1 << 23  # events reduced at a time: 8M events cost about 0.5 GB to sort
ROW_GROUP = 1 << 20  # pairs per Parquet row group (pyarrow's default)


@functools.cache
def pairs_schema() -> pa.Schema:
    """The schema, pandas metadata included, that pandas' `to_parquet` gave this file: the
    stage writes Arrow directly now, and the same pairs still give the same bytes.

    Built on first use: importing pandas costs about 0.3 CPU-s, and the stages that only
    read events (mask) never need it.
    """
    import pandas as pd

    frame = pd.DataFrame(
        {
            "USER_ID": np.array(["u"], dtype=object),
            "ITEM_ID": np.array(["i"], dtype=object),
            "CONFIDENCE": np.zeros(1, dtype=np.float32),
            "LAST_TIMESTAMP": np.zeros(1, dtype=np.int64),
        }
    )
    return pa.Schema.from_pandas(frame, preserve_index=False)


@dataclass(frozen=True)
class ConfidenceParams:
    """`confidence:` params: a weight per event type and how a pair's weights combine."""

    weights: dict[str, float]
    aggregation: str
    log_epsilon: float

    @classmethod
    def from_section(cls, s: Section) -> ConfidenceParams:
        weights = s.mapping("weights")
        for event, weight in weights.items():
            if not isinstance(event, str) or not event:
                raise StageError(
                    f"params.yaml: confidence.weights has key {event!r}; expected a name"
                )
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not MIN_WEIGHT <= weight <= MAX_WEIGHT
            ):
                raise StageError(
                    f"params.yaml: confidence.weights.{event} = {weight!r}; expected a "
                    f"number in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}] (a relative importance)"
                )
        return cls(
            weights={str(k): float(v) for k, v in weights.items()},
            aggregation=s.choice("aggregation", AGGREGATIONS, "sum"),
            log_epsilon=s.float("log_epsilon", 1.0, min=0, min_exclusive=True),
        )


def load_events(path: Path | str = INTERACTIONS) -> pa.Table:
    """Read only the columns confidence needs, ids dictionary-encoded (one dictionary per
    column for the whole file), so 80M events cost 20 bytes each, not a string each.

    Ids are read as text, never as numbers: "007" and "7" are two users.
    """
    import pyarrow.csv as pacsv

    text = pa.dictionary(pa.int32(), pa.string())
    types = {"USER_ID": text, "ITEM_ID": text, "EVENT_TYPE": text, "TIMESTAMP": pa.int64()}
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=COLUMNS,
                column_types=types,
                strings_can_be_null=False,  # ids such as "NA" or "null" are ids
            ),
        ).unify_dictionaries()
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the generate stage first (dvc repro)") from None
    except (ValueError, KeyError, OSError, UnicodeDecodeError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "conversion error to int64" in reason:
            raise StageError(
                f"{path}: column TIMESTAMP must hold whole epoch seconds ({reason})"
            ) from None
        raise StageError(
            f"{path}: not a readable event log with columns {', '.join(COLUMNS)} ({reason})"
        ) from None
    if table.num_rows == 0:
        raise StageError(f"{path}: no events (header only); expected at least one row")
    timestamps = table["TIMESTAMP"]
    if timestamps.null_count:
        row = int(np.flatnonzero(timestamps.is_null().to_numpy(zero_copy_only=False))[0])
        raise StageError(
            f"{path}: line {row + 2}: blank TIMESTAMP; column TIMESTAMP must hold whole "
            "epoch seconds"
        )
    for column in ("USER_ID", "ITEM_ID", "EVENT_TYPE"):
        ids = dictionary(table[column])
        blank = pc.equal(ids, "").to_numpy(zero_copy_only=False)
        if blank.any():
            row = _first_row(table[column], int(np.flatnonzero(blank)[0]))
            raise StageError(f"{path}: line {row + 2}: blank {column}; expected an id")
    for column in ("USER_ID", "ITEM_ID"):  # the file can be edited by hand
        ids = dictionary(table[column])
        if pc.max(pc.utf8_length(ids)).as_py() > MAX_ID_LENGTH:
            check_id_length(path, column, ids, codes(table[column]))
        control = has_control_characters(ids)
        if control.any():
            code = int(np.flatnonzero(control)[0])
            row = _first_row(table[column], code)
            raise StageError(
                f"{path}: line {row + 2}: {column} = {describe_id(ids[code].as_py())}; "
                "expected no control characters (NUL, tab, newline, ...)"
            )
    return table


def _first_row(column: pa.ChunkedArray, code: int) -> int:
    """0-based row of the first occurrence of dictionary entry `code`."""
    offset = 0
    for chunk in column.chunks:
        hits = np.flatnonzero(chunk.indices.to_numpy(zero_copy_only=False) == code)
        if hits.size:
            return offset + int(hits[0])
        offset += len(chunk)
    raise AssertionError("dictionary entry with no row")


def event_weights(event_types: pa.Array, weights: dict[str, float]) -> np.ndarray:
    """Weight per event type of the dictionary `event_types`; a type without a weight is an
    error that names it."""
    names = event_types.to_pylist()
    missing = [str(c) for c in names if c not in weights]
    if missing:
        raise StageError(
            f"{INTERACTIONS}: event type {missing[0]!r} has no weight; add it to "
            f"confidence.weights in params.yaml (known: {', '.join(weights)})"
        )
    return np.array([weights[c] for c in names], dtype=np.float64)


@dataclass(frozen=True)
class Pairs:
    """One entry per (user, item) pair, sorted by (USER_ID, ITEM_ID): indices into the
    sorted distinct ids, the aggregated CONFIDENCE (float32) and LAST_TIMESTAMP (int64)."""

    user_ids: pa.Array
    item_ids: pa.Array
    user: np.ndarray
    item: np.ndarray
    confidence: np.ndarray
    last_timestamp: np.ndarray

    def __len__(self) -> int:
        return int(self.user.size)

    def table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """Rows start..stop with the ids as text, in the confidence file's schema."""
        rows = slice(start, stop)
        return pa.Table.from_arrays(
            [
                self.user_ids.take(pa.array(self.user[rows])).cast(pa.large_string()),
                self.item_ids.take(pa.array(self.item[rows])).cast(pa.large_string()),
                pa.array(self.confidence[rows]),
                pa.array(self.last_timestamp[rows]),
            ],
            schema=pairs_schema(),
        )

    def to_frame(self) -> pd.DataFrame:  # tests and notebooks
        return self.table().to_pandas()


def _group(
    key: np.ndarray, weight: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys ascending, sum of weights, max of ts) per key; sums run in row order."""
    order = np.argsort(key, kind="stable")
    key = key[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return (
        key[start],
        np.add.reduceat(weight[order], start),
        np.maximum.reduceat(ts[order], start),
    )


def aggregate(
    events: pa.Table, weights: dict[str, float], aggregation: str, log_epsilon: float
) -> Pairs:
    """Aggregate the events into `Pairs`, `CHUNK_ROWS` events at a time.

    Each chunk is reduced to its own pairs (a sort of int64 pair keys), then the chunks'
    pairs are reduced again, so memory follows the number of pairs plus one chunk, not the
    number of events.
    """
    users, user_rank = sorted_ids(dictionary(events["USER_ID"]))
    items, item_rank = sorted_ids(dictionary(events["ITEM_ID"]))
    weight_of = event_weights(dictionary(events["EVENT_TYPE"]), weights)
    n_items = max(1, len(items))
    columns = [events[c] for c in ("USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP")]
    parts = []
    for start, stop in _chunk_ranges(columns[0], CHUNK_ROWS):
        u, i, e = (codes(c, start, stop) for c in columns[:3])
        ts = np.concatenate(
            [c.to_numpy() for c in columns[3].chunks[start:stop]] or [np.empty(0, np.int64)]
        )
        parts.append(_group(user_rank[u] * n_items + item_rank[i], weight_of[e], ts))
        del u, i, e, ts
    if len(parts) == 1:
        key, total, last = parts[0]
    else:
        key, total, last = _group(*(np.concatenate(p) for p in zip(*parts, strict=True)))
    del parts
    user, item = np.divmod(key, n_items)
    return finish(
        users, items, user.astype(np.int32), item.astype(np.int32), total, last, aggregation,
        log_epsilon,
    )  # fmt: skip


def finish(
    users: pa.Array, items: pa.Array, user: np.ndarray, item: np.ndarray, total: np.ndarray,
    last: np.ndarray, aggregation: str, log_epsilon: float,
) -> Pairs:  # fmt: skip
    """`Pairs` from every engine's float64 weighted sums: the same numpy `log1p` and float32
    cast whoever summed, so engines agree to the bit, and the same refusal of a pair whose
    confidence is not a finite float32, naming it."""
    with np.errstate(over="ignore"):  # refused below, naming a pair
        if aggregation == "log":
            total = np.log1p(total / log_epsilon)
        confidence = total.astype(np.float32)
    pairs = Pairs(users, items, user, item, confidence, last)
    bad = ~np.isfinite(confidence)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise StageError(
            f"{INTERACTIONS}: the pair USER_ID {users[int(user[row])].as_py()!r}, ITEM_ID "
            f"{items[int(item[row])].as_py()!r} aggregates to a confidence of {confidence[row]} "
            f"({bad.sum():,} pairs do); expected a finite float32: lower confidence.weights "
            "or raise confidence.log_epsilon in params.yaml"
        )
    return pairs


def _chunk_ranges(column: pa.ChunkedArray, rows: int) -> list[tuple[int, int]]:
    """Ranges of whole chunks of about `rows` rows each (at least one range)."""
    ranges, start, size = [], 0, 0
    for j, chunk in enumerate(column.chunks):
        size += len(chunk)
        if size >= rows:
            ranges.append((start, j + 1))
            start, size = j + 1, 0
    if start < column.num_chunks or not ranges:
        ranges.append((start, column.num_chunks))
    return ranges


def write_pairs(pairs: Pairs, path: Path | str = CONFIDENCE) -> None:
    """Parquet (zstd) in row groups of `ROW_GROUP` pairs, ids materialised one group at a
    time; the bytes are those pandas' `to_parquet` wrote for the same pairs."""
    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, pairs_schema(), compression="zstd") as writer,
    ):
        for start in range(0, max(len(pairs), 1), ROW_GROUP):
            writer.write_table(pairs.table(start, start + ROW_GROUP), row_group_size=ROW_GROUP)
