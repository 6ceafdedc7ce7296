"""The confidence aggregation, written once as SQL, and the engines that run it.

The query reads two relations: `events (USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP)` and
`event_types (EVENT_TYPE, K)`, the K-th configured event type. It counts each pair's events
per type (integers: exact in any order, on any number of threads or machines) and weighs the
counts in one fixed left-to-right expression, so DuckDB, Spark SQL and the hand-written
pyarrow code give the same float64 sums bit for bit. The text holds no user string (types are
joined, weights are numbers), so no engine's quoting rules can change its meaning.

`engine.name` picks who runs it: `duckdb` (default, embedded), `spark` (Spark SQL on
`engine.spark_master`, see `recsys.spark`) or `pyarrow` (the earlier hand-written numpy
reduction, kept as the reference the others are checked and benchmarked against). Every
engine's sums go through the same `recsys.confidence.finish` and the same Parquet writer,
so `data/confidence.parquet` is the same bytes whichever engine ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from recsys.confidence import Pairs, event_weights, finish, load_events
from recsys.errors import StageError
from recsys.ids import codes, dictionary, in_order, sorted_ids
from recsys.params import Section
from recsys.sparksession import MASTER, MEMORY

if TYPE_CHECKING:  # imported where used: the other engines need no duckdb
    import duckdb

ENGINES = ["duckdb", "spark", "pyarrow"]


@dataclass(frozen=True)
class EngineParams:
    """`engine:` params: who runs the aggregation; the Spark keys matter only for `spark`.

    The engine changes no output byte (tests check it), but it is declared by the stage
    that uses it so that switching engines re-runs it and shows the engine works.
    """

    name: str = "duckdb"
    spark_master: str = "local[2]"
    spark_executor_memory: str = "1g"
    spark_driver_memory: str = "1g"
    spark_shuffle_partitions: int = 8
    spark_events: str = ""
    spark_staging: str = ""

    @classmethod
    def from_section(cls, s: Section) -> EngineParams:
        memory = {}
        for key in ("spark_executor_memory", "spark_driver_memory"):
            memory[key] = s.str(key, "1g")
            if not MEMORY.match(memory[key]):
                raise StageError(
                    f"params.yaml: engine.{key} = {memory[key]!r}; expected a size such as "
                    "512m or 4g"
                )
        master = s.str("spark_master", "local[2]")
        if not MASTER.match(master):
            raise StageError(
                f"params.yaml: engine.spark_master = {master!r}; expected local[N], "
                "spark://host:port, yarn or k8s://..."
            )
        return cls(
            name=s.choice("name", ENGINES, "duckdb"),
            spark_master=master,
            spark_executor_memory=memory["spark_executor_memory"],
            spark_driver_memory=memory["spark_driver_memory"],
            spark_shuffle_partitions=s.int("spark_shuffle_partitions", 8, min=1, max=100_000),
            spark_events=s.str("spark_events", "", empty=True),
            spark_staging=s.str("spark_staging", "", empty=True),
        )


def confidence_sql(weights: dict[str, float]) -> str:
    """The aggregation: per (USER_ID, ITEM_ID), the weighted event count as TOTAL (float64)
    and the latest TIMESTAMP, sorted by USER_ID then ITEM_ID (the order the matrix needs).

    Events whose type is not in `event_types` are dropped by the join: every engine refuses
    them by name before it runs this.
    """
    counts = ",\n       ".join(
        f"count(CASE WHEN t.K = {k} THEN 1 END) AS N{k}" for k in range(len(weights))
    )
    total = "\n     + ".join(
        f"CAST(N{k} AS DOUBLE) * CAST('{float(w)!r}' AS DOUBLE)"
        for k, w in enumerate(weights.values())
    )
    return f"""
SELECT USER_ID, ITEM_ID,
       {total} AS TOTAL,
       LAST_TIMESTAMP
FROM (
  SELECT e.USER_ID AS USER_ID, e.ITEM_ID AS ITEM_ID,
       {counts},
       max(e.TIMESTAMP) AS LAST_TIMESTAMP
  FROM events e JOIN event_types t ON e.EVENT_TYPE = t.EVENT_TYPE
  GROUP BY e.USER_ID, e.ITEM_ID
) per_pair
ORDER BY USER_ID, ITEM_ID
"""


PART_EVENTS = 1 << 21
"""Events per DuckDB query. The events are split into ranges of users of about this many
events, one query each: DuckDB's hash table grows with the pairs it holds, so one query
over the whole log, not the log itself, would set the stage's peak memory.
Results come back in (USER_ID, ITEM_ID) order, range after range, so they concatenate."""

BLOCK_EVENTS = 1 << 20
"""Events turned from dictionary codes into integer ranks at a time: the text-keyed chunks
are released block by block while their integer copies are split into the ranges."""

COUNT_CHUNKS = 256
"""Chunks counted per `np.bincount` when ranges are drawn (about 4M events with the CSV
reader's blocks): each call costs a pass over every user as well as over its events."""

EVENTS_SCHEMA = pa.schema(
    [("USER_ID", pa.int32()), ("ITEM_ID", pa.int32()), ("EVENT_TYPE", pa.int32()),
     ("TIMESTAMP", pa.int64())]
)  # fmt: skip


def aggregate_duckdb(
    path: Path | str, weights: dict[str, float], aggregation: str, log_epsilon: float,
    threads: int, part_events: int = PART_EVENTS,
) -> tuple[Pairs, int]:  # fmt: skip
    """(pairs, events read): the query run by DuckDB over the event log at `path`, read
    and checked line by line by `recsys.confidence.load_events`.

    Ids go in as their rank among the sorted distinct ids (int32), not as text: the same
    order, a far smaller hash table, and the text is attached once per pair by the writer.
    Event types go in as their position K (an int join, same query text). The query runs
    once per range of users holding about `part_events` events (`PART_EVENTS`); a user's
    events are all in one range, so every pair is aggregated whole.
    """
    import duckdb

    events = load_events(path)
    n_events = events.num_rows
    type_names = dictionary(events["EVENT_TYPE"])
    event_weights(type_names, weights)  # an unweighted type, by name
    position = {name: k for k, name in enumerate(weights)}
    type_k = np.array([position[name] for name in type_names.to_pylist()], dtype=np.int32)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET threads = {max(1, threads)}")
        con.execute("SET preserve_insertion_order = false")
        users, user_rank = _sorted_ids(con, dictionary(events["USER_ID"]))
        items, item_rank = _sorted_ids(con, dictionary(events["ITEM_ID"]))
        columns = [
            list(events[c].chunks) for c in ("USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP")
        ]
        del events
        ranges = _user_ranges(columns, (user_rank, item_rank, type_k), part_events)
        k = pa.array(range(len(weights)), pa.int32())
        con.register("event_types", pa.table({"EVENT_TYPE": k, "K": k}))
        query = confidence_sql(weights)
        out: dict[str, list[np.ndarray]] = {}
        while ranges:
            part = ranges.pop(0)
            con.register("events", pa.Table.from_batches(part, EVENTS_SCHEMA))
            del part
            for name, values in con.execute(query).fetchnumpy().items():
                out.setdefault(name, []).append(np.asarray(values))
            con.unregister("events")
    finally:
        con.close()
    column = {name: np.concatenate(parts) for name, parts in out.items()}
    pairs = finish(
        users, items, column["USER_ID"].astype(np.int32, copy=False),
        column["ITEM_ID"].astype(np.int32, copy=False),
        column["TOTAL"].astype(np.float64, copy=False),
        column["LAST_TIMESTAMP"].astype(np.int64, copy=False), aggregation, log_epsilon,
    )  # fmt: skip
    return pairs, n_events


def _sorted_ids(con: duckdb.DuckDBPyConnection, ids: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """`recsys.ids.sorted_ids` by DuckDB: the same order (both compare UTF-8 bytes; the
    tests check it), and faster than Arrow's sort for millions of distinct ids."""
    con.register("ids", pa.table({"ID": ids, "I": pa.array(np.arange(len(ids), dtype=np.int64))}))
    try:
        order = np.asarray(con.execute("SELECT I FROM ids ORDER BY ID").fetchnumpy()["I"])
    finally:
        con.unregister("ids")
    return in_order(ids, order)


def _user_ranges(
    columns: list[list[pa.Array]], ranks: tuple[np.ndarray, np.ndarray, np.ndarray],
    part_events: int,
) -> list[list[pa.RecordBatch]]:  # fmt: skip
    """The events as integer batches, grouped into ranges of user rank of about
    `part_events` events each (in rank order; empty ranges dropped).

    `columns` are the USER_ID, ITEM_ID, EVENT_TYPE and TIMESTAMP chunks (dictionary codes
    for the first three); they are emptied as they are converted, `BLOCK_EVENTS` at a time.
    """
    user_rank, item_rank, type_k = ranks
    per_user = np.zeros(user_rank.size, dtype=np.int64)
    for start in range(0, len(columns[0]), COUNT_CHUNKS):
        # many chunks per bincount: each one costs a pass over all users
        users = codes(pa.chunked_array(columns[0][start : start + COUNT_CHUNKS]))
        per_user += np.bincount(users, minlength=user_rank.size)
    events_by_rank = np.empty_like(per_user)
    events_by_rank[user_rank] = per_user
    first_event = np.cumsum(events_by_rank) - events_by_rank
    range_of_rank = first_event // max(1, part_events)
    n_ranges = int(range_of_rank[-1]) + 1 if range_of_rank.size else 1
    dtype = np.int16 if n_ranges < 2**15 else np.int32  # int16: numpy's argsort is a radix sort
    range_of_code = range_of_rank[user_rank].astype(dtype)
    del per_user, events_by_rank, first_event, range_of_rank
    ranges: list[list[pa.RecordBatch]] = [[] for _ in range(n_ranges)]
    while columns[0]:
        taken: list[list[pa.Array]] = [[], [], [], []]
        size = 0
        while columns[0] and size < BLOCK_EVENTS:
            size += len(columns[0][0])
            for column, chunks in zip(columns, taken, strict=True):
                chunks.append(column.pop(0))
        block = [pa.chunked_array(chunks) for chunks in taken]
        del taken
        user, item, event = (codes(column) for column in block[:3])
        ts = block[3].to_numpy()
        del block
        where = range_of_code[user]
        order = np.argsort(where, kind="stable")
        bounds = np.cumsum(np.bincount(where, minlength=n_ranges))
        arrays = (
            user_rank[user[order]].astype(np.int32), item_rank[item[order]].astype(np.int32),
            type_k[event[order]], ts[order],
        )  # fmt: skip
        del user, item, event, ts, where, order
        start = 0
        for r, stop in enumerate(bounds.tolist()):
            if stop > start:
                ranges[r].append(
                    pa.RecordBatch.from_arrays(
                        [pa.array(a[start:stop]) for a in arrays], schema=EVENTS_SCHEMA
                    )
                )
            start = stop
        del arrays
    return [r for r in ranges if r]


def pairs_from_text(result: pa.Table, aggregation: str, log_epsilon: float) -> Pairs:
    """`Pairs` from a result whose ids are text (Spark's), already in (USER_ID, ITEM_ID)
    order: each distinct id is kept once and each pair holds its rank."""
    if result.num_rows == 0:
        raise StageError("the event log holds no event of a weighted type; no pairs")
    user_col = result["USER_ID"].cast(pa.string()).dictionary_encode()
    item_col = result["ITEM_ID"].cast(pa.string()).dictionary_encode()
    user_col = pa.table({"c": user_col}).unify_dictionaries()["c"]
    item_col = pa.table({"c": item_col}).unify_dictionaries()["c"]
    users, user_rank = sorted_ids(dictionary(user_col))
    items, item_rank = sorted_ids(dictionary(item_col))
    return finish(
        users, items, user_rank[codes(user_col)].astype(np.int32),
        item_rank[codes(item_col)].astype(np.int32),
        result["TOTAL"].to_numpy().astype(np.float64, copy=False),
        result["LAST_TIMESTAMP"].to_numpy().astype(np.int64, copy=False),
        aggregation, log_epsilon,
    )  # fmt: skip
