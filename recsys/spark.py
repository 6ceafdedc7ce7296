"""Spark SQL for the confidence aggregation: the same query text as DuckDB, on a cluster.

Spark reads the event log where it lives (`engine.spark_events`: a file, a folder of
files, a glob or an `s3a://` URL; CSV, gzip CSV or Parquet), so a log far larger than one
machine's memory never passes through one Python process. The aggregated pairs come back
to the driver as Parquet files that Spark writes, sorted, into a staging folder
(`engine.spark_staging`, see `recsys.sparksession.staging_folder`), read by pyarrow and
written by the one Parquet writer every engine shares.

What a Spark run checks, and how it reports it: a missing column (by name), an event type
without a weight (by name), a blank id, an id longer than the limit, a TIMESTAMP that is not
a whole number (by file and the row's values). It cannot give line numbers: Spark splits
files across tasks and keeps no line count, so a bad row is named by its file and content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from recsys.aggregation import EngineParams, confidence_sql, pairs_from_text
from recsys.confidence import COLUMNS, ConfidenceParams, Pairs
from recsys.errors import StageError
from recsys.ids import MAX_ID_LENGTH
from recsys.paths import CONFIDENCE, INTERACTIONS
from recsys.sparksession import java_error, read_parts, session, staging_folder

FORMATS = {".parquet": "parquet", ".csv": "csv", ".gz": "csv"}


def events_format(path: str) -> str:
    """`csv` or `parquet` for a file, folder or glob; a local folder must hold one kind."""
    local = Path(path.removeprefix("file://"))
    if "://" not in path.removeprefix("file://") and local.is_dir():
        kinds = {
            FORMATS.get(p.suffix) for p in local.iterdir() if not p.name.startswith((".", "_"))
        }
        kinds.discard(None)
        if len(kinds) != 1:
            raise StageError(
                f"{path}: expected a folder of .csv, .csv.gz or .parquet files (one kind); "
                f"found {', '.join(sorted(k for k in kinds if k)) or 'none'}"
            )
        return kinds.pop()
    if "://" not in path and not any(c in path for c in "*?[") and not local.exists():
        raise StageError(f"{path}: not found; expected the event log (a file or folder)")
    suffix = Path(path.rstrip("/")).suffix
    if suffix not in FORMATS:
        raise StageError(
            f"{path}: cannot tell the format; expected a name or glob ending .csv, .csv.gz "
            "or .parquet, or a local folder"
        )
    return FORMATS[suffix]


def read_events(spark: Any, path: str) -> Any:
    """The log as a DataFrame of the four columns, ids and TIMESTAMP as text (checked later):
    Spark reads it in parallel, compressed or not, straight from the files."""
    fmt = events_format(path)
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", "true").option("inferSchema", "false")
    try:
        raw = reader.load(path)
    except Exception as exc:
        raise StageError(f"{path}: not a readable event log ({java_error(exc)})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise StageError(f"{path}: no column {missing[0]}; expected columns {', '.join(COLUMNS)}")
    from pyspark.sql import functions as F

    return raw.select(
        *[F.col(c).cast("string").alias(c) for c in COLUMNS],
        F.input_file_name().alias("FILE"),
    )


CHECK_SQL = f"""
SELECT FILE, USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP FROM raw
WHERE USER_ID IS NULL OR USER_ID = '' OR ITEM_ID IS NULL OR ITEM_ID = ''
   OR EVENT_TYPE IS NULL OR EVENT_TYPE = '' OR TIMESTAMP IS NULL
   OR try_cast(TIMESTAMP AS BIGINT) IS NULL
   OR length(USER_ID) > {MAX_ID_LENGTH} OR length(ITEM_ID) > {MAX_ID_LENGTH}
LIMIT 1
"""


def check_events(spark: Any, weights: dict[str, float], path: str) -> int:
    """Refuse the first bad row (by file and values) and unweighted event types (by name);
    return the number of events. Two passes over the log, both in parallel."""
    bad = spark.sql(CHECK_SQL).collect()
    if bad:
        row = bad[0]
        values = ", ".join(f"{c}={row[c]!r}" for c in COLUMNS)
        raise StageError(
            f"{row['FILE']}: a row with {values}: expected non-blank ids of at most "
            f"{MAX_ID_LENGTH} characters and TIMESTAMP in whole epoch seconds (Spark reads "
            "files in parallel splits and reports rows by content, not line number)"
        )
    counts = spark.sql("SELECT EVENT_TYPE, count(*) AS n FROM raw GROUP BY EVENT_TYPE").collect()
    missing = sorted(r["EVENT_TYPE"] for r in counts if r["EVENT_TYPE"] not in weights)
    if missing:
        raise StageError(
            f"{path}: event type {missing[0]!r} has no weight; add it to confidence.weights "
            f"in params.yaml (known: {', '.join(weights)})"
        )
    total = sum(int(r["n"]) for r in counts)
    if total == 0:
        raise StageError(f"{path}: no events; expected at least one row")
    return total


EMPTY = pa.schema(
    [("USER_ID", pa.string()), ("ITEM_ID", pa.string()), ("TOTAL", pa.float64()),
     ("LAST_TIMESTAMP", pa.int64())]
)  # fmt: skip


def aggregate_spark(params: ConfidenceParams, engine: EngineParams) -> tuple[Pairs, int]:
    """(pairs, events read): check and aggregate `engine.spark_events` (default: the
    generated `data/interactions.csv`) with Spark SQL on `engine.spark_master`."""
    path = engine.spark_events or str(INTERACTIONS)
    if "://" not in path:
        path = str(Path(path).resolve())
    with session(
        engine.spark_master, "recsys-confidence",
        executor_memory=engine.spark_executor_memory,
        driver_memory=engine.spark_driver_memory,
        shuffle_partitions=engine.spark_shuffle_partitions,
    ) as spark:  # fmt: skip
        return aggregate_in_session(spark, path, params, engine.spark_staging)


def aggregate_in_session(
    spark: Any, path: str, params: ConfidenceParams, staging: str = ""
) -> tuple[Pairs, int]:
    """Read, check and aggregate the log at `path` on a running session; the sorted pairs
    come back through Parquet files in `staging` (see `staging_folder`)."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    read_events(spark, path).createOrReplaceTempView("raw")
    try:
        n_events = check_events(spark, params.weights, path)
        spark.sql(
            "SELECT USER_ID, ITEM_ID, EVENT_TYPE, CAST(TIMESTAMP AS BIGINT) AS TIMESTAMP FROM raw"
        ).createOrReplaceTempView("events")
        schema = StructType(
            [StructField("EVENT_TYPE", StringType()), StructField("K", IntegerType())]
        )
        types = [(name, k) for k, name in enumerate(params.weights)]
        spark.createDataFrame(types, schema).createOrReplaceTempView("event_types")
        with staging_folder(staging, "engine.spark_staging", CONFIDENCE.parent) as staged:
            uri, filesystem, folder = staged
            spark.sql(confidence_sql(params.weights)).write.mode("overwrite").parquet(uri)
            result = read_parts(filesystem, folder)
        if result is None:  # no rows: no parts
            result = EMPTY.empty_table()
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{path}: Spark failed ({java_error(exc)})") from None
    return pairs_from_text(result, params.aggregation, params.log_epsilon), n_events
