"""A SparkSession for the project's Spark work (the confidence engine, the spark_als family).

Kept apart from both users so that each stage's code deps stay its own: train does not
depend on the aggregation code, nor confidence on the model family.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
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
