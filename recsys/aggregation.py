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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.confidence import Pairs, event_weights, finish, load_events
from recsys.errors import StageError
from recsys.ids import codes, dictionary, sorted_ids
from recsys.params import Section
from recsys.sparksession import MASTER, MEMORY

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


def aggregate_duckdb(
    path: Path | str, weights: dict[str, float], aggregation: str, log_epsilon: float,
    threads: int,
) -> tuple[Pairs, int]:  # fmt: skip
    """(pairs, events read): the query run by DuckDB over the event log at `path`, read
    and checked line by line by `recsys.confidence.load_events`.

    Ids go in as their rank among the sorted distinct ids (int32), not as text: the same
    order, a far smaller hash table, and the text is attached once per pair by the writer.
    Event types go in as their position K (an int join, same query text).
    DuckDB pulls the events as a stream of batches, each made from one chunk of the table
    and that chunk released once read, so the input shrinks while the hash table grows.
    """
    import duckdb

    events = load_events(path)
    n_events = events.num_rows
    type_names = dictionary(events["EVENT_TYPE"])
    event_weights(type_names, weights)  # an unweighted type, by name
    position = {name: k for k, name in enumerate(weights)}
    type_k = np.array([position[name] for name in type_names.to_pylist()], dtype=np.int32)
    users, user_rank = sorted_ids(dictionary(events["USER_ID"]))
    items, item_rank = sorted_ids(dictionary(events["ITEM_ID"]))
    schema = pa.schema(
        [("USER_ID", pa.int32()), ("ITEM_ID", pa.int32()), ("EVENT_TYPE", pa.int32()),
         ("TIMESTAMP", pa.int64())]
    )  # fmt: skip
    chunks = [list(events[c].chunks) for c in ("USER_ID", "ITEM_ID", "EVENT_TYPE", "TIMESTAMP")]
    del events

    def batches() -> Iterator[pa.RecordBatch]:
        for _ in range(len(chunks[0])):
            user, item, event, ts = (column.pop(0) for column in chunks)
            yield pa.RecordBatch.from_arrays(
                [pa.array(user_rank[user.indices.to_numpy(zero_copy_only=False)].astype(np.int32)),
                 pa.array(item_rank[item.indices.to_numpy(zero_copy_only=False)].astype(np.int32)),
                 pa.array(type_k[event.indices.to_numpy(zero_copy_only=False)]), ts],
                schema=schema,
            )  # fmt: skip

    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET threads = {max(1, threads)}")
        con.execute("SET preserve_insertion_order = false")
        con.register("events", pa.RecordBatchReader.from_batches(schema, batches()))
        k = pa.array(range(len(weights)), pa.int32())
        con.register("event_types", pa.table({"EVENT_TYPE": k, "K": k}))
        out = con.execute(confidence_sql(weights)).fetchnumpy()
    finally:
        con.close()
    pairs = finish(
        users, items, np.asarray(out.pop("USER_ID"), dtype=np.int32),
        np.asarray(out.pop("ITEM_ID"), dtype=np.int32),
        np.asarray(out.pop("TOTAL"), dtype=np.float64),
        np.asarray(out.pop("LAST_TIMESTAMP"), dtype=np.int64), aggregation, log_epsilon,
    )  # fmt: skip
    return pairs, n_events


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
