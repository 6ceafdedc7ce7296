"""A SparkSession for the project's Spark work (the confidence engine, the spark_als family),
and the staging folder through which results come back to the driver.

Kept apart from both users so that each stage's code deps stay its own: train does not
depend on the aggregation code, nor confidence on the model family.

Results come back as Parquet files that the executors write into a staging folder and the
driver reads with pyarrow, not through Spark's own collection (`toArrow`, `toPandas`): that
collection cost the driver about 750 bytes per pair and failed at 24M pairs, and MLlib's
factors at 10x failed the same way (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys.errors import StageError

# Spark's own size syntax: a number and a unit (k, m, g, t), e.g. 2g or 512m
MEMORY = re.compile(r"^[1-9][0-9]*[kmgtKMGT]$")
MASTER = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://[^/\s]+|yarn|k8s://\S+)$")


def java_error(exc: BaseException) -> str:
    """The first line of a Spark/JVM error, without the Java stack."""
    text = str(getattr(exc, "desc", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def session(
    master: str, app: str, *, executor_memory: str = "1g", driver_memory: str = "1g",
    shuffle_partitions: int = 8, conf: dict[str, str] | None = None,
) -> Iterator[Any]:  # fmt: skip
    """A SparkSession on `master`, stopped on exit; UTC, no web UI, quiet logs.

    A missing Java or an unreachable master is a one-line StageError, not a Java stack.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise StageError("pyspark is not installed; pip install -r requirements.txt") from None
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no guess at a public interface
    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.executor.memory", executor_memory)
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", os.environ.get("SPARK_DRIVER_HOST", "127.0.0.1"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # JVM missing (PySparkRuntimeError), master refused (Py4J)
        raise StageError(
            f"could not start Spark on {master} ({java_error(exc)}); Java 17 or 21 must be "
            "on PATH (apt-get install openjdk-17-jre-headless) and the master reachable"
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


# Spark names a task's output part-<partition>-<job uuid>-c<file>; a sorted result's
# partitions hold consecutive ranges, so partition then file number is the result's order.
PART = re.compile(r"^part-(\d+)-.*?-c(\d+)(\.[a-z0-9]+)*\.parquet$")


@contextlib.contextmanager
def staging_folder(staging: str, key: str, local_parent: Path) -> Iterator[tuple[str, Any, str]]:
    """(URI Spark writes under, pyarrow filesystem, path in it) of a new folder, removed on
    exit whatever happens.

    `staging` "" is a temporary folder in `local_parent` if it exists (`local[N]`, or a
    cluster on one machine); otherwise a folder every executor and the driver reach: a
    shared path, or a URL (`s3a://` is read by pyarrow as `s3://`). `key` names the param in
    errors.
    """
    import pyarrow as pa
    from pyarrow import fs as pafs

    if not staging:
        parent = local_parent if local_parent.is_dir() else None
        local = Path(tempfile.mkdtemp(prefix=".spark-staging-", dir=parent)).resolve()
        try:
            yield local.as_uri(), pafs.LocalFileSystem(), str(local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    uri = f"{staging.rstrip('/')}/recsys-{uuid.uuid4().hex}"
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    try:
        filesystem, path = pafs.FileSystem.from_uri(re.sub(r"^s3a://", "s3://", uri))
    except (pa.ArrowException, ValueError) as exc:
        raise StageError(
            f"params.yaml: {key} = {staging!r}: the driver cannot read it ({exc}); expected "
            "a folder or a URL that pyarrow and every executor reach"
        ) from None
    try:
        yield uri, filesystem, path
    finally:
        with contextlib.suppress(OSError, pa.ArrowException):
            filesystem.delete_dir(path)


def read_parts(filesystem: Any, path: str) -> Any:
    """The Parquet parts Spark wrote at `path` as one Arrow table in the result's order
    (None when there are none); refused unless Spark committed the write (`_SUCCESS`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    entries = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = {Path(e.path).name: e.path for e in entries if e.type == pafs.FileType.File}
    if "_SUCCESS" not in names:
        raise StageError(f"{path}: Spark did not finish writing its result (no _SUCCESS file)")
    parts = sorted(
        (int(m[1]), int(m[2]), full) for name, full in names.items() if (m := PART.match(name))
    )
    tables = [pq.read_table(full, filesystem=filesystem) for _, _, full in parts]
    return pa.concat_tables(tables) if tables else None
