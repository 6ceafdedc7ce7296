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

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.confidence import Pairs, event_weights, finish
from recsys.errors import StageError
from recsys.ids import codes, dictionary, sorted_ids
from recsys.params import Section

ENGINES = ["duckdb", "spark", "pyarrow"]
# Spark's own size syntax: a number and a unit (k, m, g, t), e.g. 2g or 512m
MEMORY = re.compile(r"^[1-9][0-9]*[kmgtKMGT]$")
MASTER = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://[^/\s]+|yarn|k8s://\S+)$")


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


def event_types_table(weights: dict[str, float]) -> pa.Table:
    """The `event_types` relation: each configured type and its position K."""
    return pa.table(
        {"EVENT_TYPE": pa.array(list(weights), pa.string()),
         "K": pa.array(range(len(weights)), pa.int32())}
    )  # fmt: skip


def aggregate_duckdb(
    events: pa.Table, weights: dict[str, float], aggregation: str, log_epsilon: float,
    threads: int,
) -> Pairs:  # fmt: skip
    """Run the query with DuckDB over the checked events (`recsys.confidence.load_events`).

    DuckDB scans the Arrow columns in place. Ids go in as their rank among the sorted
    distinct ids (int32), not as text: the same order, a far smaller hash table, and the
    text is attached once per pair by the writer.
    """
    import duckdb

    event_weights(dictionary(events["EVENT_TYPE"]), weights)  # an unweighted type, by name
    users, user_rank = sorted_ids(dictionary(events["USER_ID"]))
    items, item_rank = sorted_ids(dictionary(events["ITEM_ID"]))
    ranked = pa.table(
        {
            "USER_ID": pa.array(user_rank[codes(events["USER_ID"])].astype(np.int32)),
            "ITEM_ID": pa.array(item_rank[codes(events["ITEM_ID"])].astype(np.int32)),
            "EVENT_TYPE": events["EVENT_TYPE"],
            "TIMESTAMP": events["TIMESTAMP"],
        }
    )
    types = event_types_table(weights)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET threads = {max(1, threads)}")
        con.execute("SET preserve_insertion_order = false")
        con.register("events", ranked)
        con.register("event_types", types)
        out = con.execute(confidence_sql(weights)).fetchnumpy()
    finally:
        con.close()
    del ranked
    return finish(
        users, items, np.asarray(out["USER_ID"], dtype=np.int32),
        np.asarray(out["ITEM_ID"], dtype=np.int32), np.asarray(out["TOTAL"], dtype=np.float64),
        np.asarray(out["LAST_TIMESTAMP"], dtype=np.int64), aggregation, log_epsilon,
    )  # fmt: skip


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
