"""One aggregation, three engines: DuckDB (default), Spark SQL and the earlier pyarrow code
write the same `data/confidence.parquet` bytes, and Spark reads folders of log files."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recsys import aggregation
from recsys.aggregation import EngineParams, _sorted_ids, aggregate_duckdb, confidence_sql
from recsys.confidence import ConfidenceParams, aggregate, load_events, write_pairs
from recsys.errors import StageError
from recsys.ids import sorted_ids
from tests.helpers import parse
from tests.s3_server import S3Server
from tests.s3_server import s3_server_fixture as s3_server_fixture  # noqa: F401

# Non-integer weights: sums that depend on the order of additions unless the engines agree
# on one (they count per type, then weigh the counts in one fixed expression).
WEIGHTS = {"View": 0.1, "AddToCart": 0.7, "ViewCart": 1.3, "StartCheckout": 2.9, "Purchase": 5.0}


def event_log(n: int = 20_000, seed: int = 3) -> pd.DataFrame:
    """A seeded log with text ids that sort differently as numbers ("007" vs "7") and
    non-ASCII ids, many repeats per pair."""
    rng = np.random.default_rng(seed)
    users = np.array([f"{i:03d}" for i in range(300)] + ["7", "ü", "Z", "a"])
    items = np.array([f"i{i}" for i in range(60)] + ["é", "10", "9"])
    return pd.DataFrame(
        {
            "USER_ID": users[rng.integers(0, users.size, n)],
            "ITEM_ID": items[rng.integers(0, items.size, n)],
            "EVENT_TYPE": np.array(list(WEIGHTS))[rng.integers(0, len(WEIGHTS), n)],
            "TIMESTAMP": rng.integers(1_700_000_000, 1_700_100_000, n),
        }
    )


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(event_log(), tmp_path_factory.mktemp("log") / "interactions.csv")


@pytest.mark.parametrize("aggregation", ["sum", "log"])
def test_duckdb_writes_the_bytes_of_the_pyarrow_code(
    log_csv: Path, tmp_path: Path, aggregation: str
) -> None:
    events = load_events(log_csv)
    write_pairs(aggregate(events, WEIGHTS, aggregation, 0.5), tmp_path / "pyarrow.parquet")
    # one range of users (one query) and about seven (a query per 3,000 events)
    for threads, part_events in ((1, 1 << 23), (2, 1 << 23), (2, 3000)):
        out = tmp_path / f"duckdb{threads}-{part_events}.parquet"
        pairs, n_events = aggregate_duckdb(
            log_csv, WEIGHTS, aggregation, 0.5, threads, part_events=part_events
        )
        assert n_events == 20_000
        write_pairs(pairs, out)
        assert digest(out) == digest(tmp_path / "pyarrow.parquet")
    frame = pq.read_table(out).to_pandas()
    assert frame["USER_ID"].tolist() == sorted(frame["USER_ID"])  # code point order
    assert {"7", "007", "ü"} <= set(frame["USER_ID"])


def test_duckdb_ranges_of_users_across_blocks_of_chunks_keep_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log read in several chunks, counted and converted a few chunks at a time and
    split into ranges of users: every range gets pieces of every block, and the pairs
    still come out whole and in order."""
    log = write_csv(event_log(200_000, seed=5), tmp_path / "big.csv")
    events = load_events(log)
    assert events["USER_ID"].num_chunks > 2  # several chunks, so several blocks
    write_pairs(aggregate(events, WEIGHTS, "log", 0.5), tmp_path / "pyarrow.parquet")
    monkeypatch.setattr(aggregation, "BLOCK_EVENTS", len(events["USER_ID"].chunk(0)))
    monkeypatch.setattr(aggregation, "COUNT_CHUNKS", 2)
    pairs, n_events = aggregate_duckdb(log, WEIGHTS, "log", 0.5, 2, part_events=30_000)
    assert n_events == 200_000
    write_pairs(pairs, tmp_path / "duckdb.parquet")
    assert digest(tmp_path / "duckdb.parquet") == digest(tmp_path / "pyarrow.parquet")


def test_duckdb_sorts_ids_as_arrow_does() -> None:
    """DuckDB's ORDER BY and Arrow's sort agree on UTF-8 byte order, so the rank of every
    id, and with it the pair order and the id maps, do not depend on the engine."""
    import duckdb

    ids = pa.array(["b", "ä", "B", "", "10", "9", "z\u00e9", "ze", "\U0001f600", "a b", "a"])
    con = duckdb.connect(":memory:")
    try:
        assert _sorted_ids(con, ids)[0].to_pylist() == sorted_ids(ids)[0].to_pylist()
        assert (_sorted_ids(con, ids)[1] == sorted_ids(ids)[1]).all()
    finally:
        con.close()


def test_duckdb_refuses_an_unweighted_event_type_by_name(log_csv: Path) -> None:
    weights = {k: v for k, v in WEIGHTS.items() if k != "ViewCart"}
    with pytest.raises(StageError, match="event type 'ViewCart' has no weight"):
        aggregate_duckdb(log_csv, weights, "sum", 1.0, 1)


def test_the_query_holds_no_event_type_text() -> None:
    """Types are joined, never quoted into the SQL, so no engine's quoting can differ."""
    sql = confidence_sql({"it's \\ odd": 1.5, "View": 1e-6})
    assert "odd" not in sql and "View" not in sql
    assert "CAST('1.5' AS DOUBLE)" in sql and "CAST('1e-06' AS DOUBLE)" in sql


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "polars"}, "engine.name = 'polars'; expected one of duckdb, spark, pyarrow"),
        ({"spark_executor_memory": "lots"}, "engine.spark_executor_memory = 'lots'"),
        ({"spark_master": "localhost:7077"}, "expected local\\[N\\], spark://host:port"),
        ({"spark_shuffle_partitions": 0}, "engine.spark_shuffle_partitions = 0"),
        ({"spark_mastr": "local[2]"}, "unknown param engine.spark_mastr"),
    ],
)
def test_engine_params_name_the_bad_key(values: dict, message: str) -> None:
    with pytest.raises(StageError, match=message):
        parse(EngineParams.from_section, "engine", values)


# ------------------------------------------------------------------------------ Spark


@pytest.fixture(scope="module")
def spark_local() -> Iterator[Any]:
    """One local[2] Spark session for this module's Spark tests (the JVM starts once)."""
    from recsys.spark import session

    with session("local[2]", "recsys-tests", shuffle_partitions=4) as spark:
        yield spark


def spark_pairs(
    spark: Any, path: Path | str, weights: dict[str, float], aggregation: str
) -> pa.Table:
    """What `recsys.spark.aggregate_spark` does inside its session, on this session."""
    from recsys.spark import aggregate_in_session

    return aggregate_in_session(
        spark, str(path), parse(ConfidenceParams.from_section, "confidence", {
            "weights": weights, "aggregation": aggregation, "log_epsilon": 0.5,
        }),
    )  # fmt: skip


def day_files(frame: pd.DataFrame, folder: Path, kind: str) -> Path:
    """The log split into three 'days' of `kind` files (csv, csv.gz or parquet)."""
    folder.mkdir(parents=True)
    bounds = np.linspace(0, len(frame), 4).astype(int)
    for day in range(3):
        part = frame.iloc[bounds[day] : bounds[day + 1]]
        name = folder / f"day{day}.{kind}"
        if kind == "parquet":
            part.to_parquet(name, index=False)
        elif kind == "csv.gz":
            with gzip.open(name, "wt") as fh:
                part.to_csv(fh, index=False)
        else:
            part.to_csv(name, index=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "csv", "csv.gz", "parquet"])
def test_spark_reads_files_and_folders_into_the_same_bytes(
    spark_local, log_csv: Path, tmp_path: Path, kind: str
) -> None:
    reference = tmp_path / "duckdb.parquet"
    write_pairs(aggregate_duckdb(log_csv, WEIGHTS, "log", 0.5, 1)[0], reference)
    source = log_csv if kind == "file" else day_files(event_log(), tmp_path / "days", kind)
    pairs, n_events = spark_pairs(spark_local, source, WEIGHTS, "log")
    assert n_events == 20_000
    write_pairs(pairs, tmp_path / "spark.parquet")
    assert digest(tmp_path / "spark.parquet") == digest(reference)


def test_staged_parts_are_read_in_partition_order_and_only_once_committed(
    tmp_path: Path,
) -> None:
    """Spark's part files sorted by name would put partition 100000 before 99999; and a
    folder without `_SUCCESS` is a write that did not finish."""
    from pyarrow import fs as pafs

    from recsys.sparksession import read_parts

    folder = tmp_path / "staged"
    folder.mkdir()
    for partition, file in [(99_999, 0), (100_000, 0), (2, 1), (2, 0)]:
        rows = pa.table({
            "USER_ID": [f"u{partition}-{file}"], "ITEM_ID": ["i"], "TOTAL": [1.0],
            "LAST_TIMESTAMP": pa.array([partition], pa.int64()),
        })  # fmt: skip
        pq.write_table(rows, folder / f"part-{partition:05d}-abc-123-c{file:03d}.snappy.parquet")
    (folder / ".part-00002-abc-123-c000.snappy.parquet.crc").write_bytes(b"")
    local = pafs.LocalFileSystem()
    with pytest.raises(StageError, match="did not finish writing its result"):
        read_parts(local, str(folder))
    (folder / "_SUCCESS").write_bytes(b"")
    assert read_parts(local, str(folder))["USER_ID"].to_pylist() == [
        "u2-0", "u2-1", "u99999-0", "u100000-0",
    ]  # fmt: skip


@pytest.mark.s3
def test_staging_on_s3_is_read_in_order_and_removed(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging URL (`s3a://`, as a cluster's executors write it) is read by the driver
    through pyarrow's S3 client, from the local S3 server over HTTP: parts in partition
    order, only once committed, and the folder deleted afterwards."""
    from recsys.sparksession import read_parts, staging_folder

    bucket = s3_server.new_bucket("staging")
    for key, value in s3_server.aws_env({}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)  # an S3-compatible store
    staging = f"s3a://{bucket}/spark"
    with staging_folder(staging, "engine.spark_staging", tmp_path) as (uri, filesystem, path):
        assert uri.startswith(f"{staging}/recsys-")
        for partition in (10, 9):
            rows = pa.table({"USER_ID": [f"u{partition}"], "TOTAL": [1.0]})
            pq.write_table(rows, f"{path}/part-{partition:05d}-abc-c000.snappy.parquet",
                           filesystem=filesystem)  # fmt: skip
        with pytest.raises(StageError, match="did not finish writing its result"):
            read_parts(filesystem, path)
        with filesystem.open_output_stream(f"{path}/_SUCCESS"):
            pass
        assert read_parts(filesystem, path)["USER_ID"].to_pylist() == ["u9", "u10"]
        assert len(s3_server.keys(bucket, "spark/")) == 3
    # nothing of the run is left; pyarrow keeps the parent `spark/` as an empty marker
    assert s3_server.keys(bucket, "spark/recsys-") == []
    assert s3_server.keys(bucket) in ([], ["spark/"])


@pytest.mark.slow
def test_spark_stages_the_pairs_where_asked_and_leaves_nothing(
    spark_local, log_csv: Path, tmp_path: Path
) -> None:
    from recsys.spark import aggregate_in_session

    reference = tmp_path / "duckdb.parquet"
    write_pairs(aggregate_duckdb(log_csv, WEIGHTS, "sum", 0.5, 1)[0], reference)
    staging = tmp_path / "staging"
    staging.mkdir()
    params = parse(ConfidenceParams.from_section, "confidence", {
        "weights": WEIGHTS, "aggregation": "sum", "log_epsilon": 0.5,
    })  # fmt: skip
    pairs, _ = aggregate_in_session(spark_local, str(log_csv), params, str(staging))
    write_pairs(pairs, tmp_path / "spark.parquet")
    assert digest(tmp_path / "spark.parquet") == digest(reference)
    assert list(staging.iterdir()) == []


@pytest.mark.slow
def test_spark_names_the_file_and_row_of_a_bad_timestamp(spark_local, tmp_path: Path) -> None:
    frame = event_log(200)
    frame["TIMESTAMP"] = frame["TIMESTAMP"].astype(str)
    frame.loc[150, "TIMESTAMP"] = "yesterday"
    folder = day_files(frame, tmp_path / "days", "csv")
    with pytest.raises(StageError, match=r"day2\.csv: a row with USER_ID=.*TIMESTAMP='yesterday'"):
        spark_pairs(spark_local, folder, WEIGHTS, "sum")


@pytest.mark.slow
def test_spark_names_blank_ids_missing_columns_and_unweighted_types(
    spark_local, tmp_path: Path
) -> None:
    frame = event_log(100)
    blank = frame.copy()
    blank.loc[40, "ITEM_ID"] = ""
    with pytest.raises(StageError, match="interactions.csv: a row with .*ITEM_ID=None"):
        spark_pairs(spark_local, write_csv(blank, tmp_path / "a" / "interactions.csv"),
                    WEIGHTS, "sum")  # fmt: skip
    with pytest.raises(StageError, match="no column EVENT_TYPE"):
        spark_pairs(spark_local, write_csv(frame.drop(columns="EVENT_TYPE"),
                    tmp_path / "b" / "interactions.csv"), WEIGHTS, "sum")  # fmt: skip
    weights = {k: v for k, v in WEIGHTS.items() if k != "Purchase"}
    with pytest.raises(StageError, match="event type 'Purchase' has no weight"):
        spark_pairs(spark_local, write_csv(frame, tmp_path / "c" / "interactions.csv"),
                    weights, "sum")  # fmt: skip
    mixed = day_files(frame, tmp_path / "mixed", "csv")
    pacsv.write_csv(pa.Table.from_pandas(frame), mixed / "extra.parquet")
    with pytest.raises(StageError, match="one kind\\); found csv, parquet"):
        spark_pairs(spark_local, mixed, WEIGHTS, "sum")


@pytest.mark.dvc
@pytest.mark.slow
def test_dvc_exp_run_on_spark_keeps_the_data_hashes(reproduced_copy: Path) -> None:
    """`-S engine.name=spark` re-runs confidence on local[2]; its output, and so the matrix
    and everything after it, keep the hashes DuckDB gave."""
    import yaml

    from tests.helpers import run

    def outs() -> dict[str, str]:
        lock = yaml.safe_load((reproduced_copy / "dvc.lock").read_text())["stages"]
        return {o["path"]: o["md5"] for s in ("confidence", "matrix") for o in lock[s]["outs"]}

    before = outs()
    proc = run(["dvc", "exp", "run", "-S", "engine.name=spark"], reproduced_copy)
    assert "Running stage 'confidence'" in proc.stdout
    assert "confidence (spark): 12,000 events" in proc.stdout
    run(["dvc", "exp", "apply", run(["dvc", "exp", "ls", "--name-only"], reproduced_copy)
         .stdout.split()[-1]], reproduced_copy)  # fmt: skip
    assert outs() == before
    assert digest(reproduced_copy / "data/confidence.parquet") == before["data/confidence.parquet"]
