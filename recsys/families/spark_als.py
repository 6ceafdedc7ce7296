"""Spark MLlib ALS with implicit preferences: the ALS family for a cluster.

The same confidences as implicit's ALS (`data/train.npz`), sent to Spark as (row, column,
value) triples with our row and column indices as MLlib's integer ids, so the factors come
back in our row order and `models/spark_als.npz` is read by evaluate, export, the bundle
and the service exactly as `models/als.npz` is (users or items MLlib never saw keep zero
factors, as implicit gives them).

How the knobs differ from implicit's (`als:`):
- confidence: both use c = 1 + alpha * r, so `alpha` means the same;
- regularization: MLlib scales `regularization` by each user's (item's) number of pairs
  (ALS-WR, Zhou et al. 2008): a user with 50 pairs gets 50 x the penalty, so good values are
  far smaller than implicit's, whose penalty is the same for every user;
- solver: MLlib solves each normal equation exactly (Cholesky); implicit's default is a few
  conjugate-gradient steps, so the same rank costs MLlib more per iteration.
An anonymous session is folded in like implicit's ALS (`recsys.families.als`), with the
unscaled `regularization`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import StageError
from recsys.families.als import AlsModel
from recsys.params import Section
from recsys.paths import MODEL
from recsys.sparksession import MASTER, MEMORY, java_error, read_parts, session, staging_folder

MAX_RANK = 1024


@dataclass(frozen=True)
class SparkAlsParams:
    """`spark_als:` params; master and memory say where it runs, the rest shape the model."""

    factors: int
    iterations: int
    regularization: float
    alpha: float
    user_blocks: int
    item_blocks: int
    seed: int
    checkpoint_interval: int
    master: str
    driver_memory: str
    executor_memory: str
    staging: str = ""

    @classmethod
    def from_section(cls, s: Section) -> SparkAlsParams:
        return cls(
            factors=s.int("factors", min=1, max=MAX_RANK),
            iterations=s.int("iterations", min=1, max=10_000),
            regularization=s.float("regularization", min=0.0),
            alpha=s.float("alpha", min=0.0, min_exclusive=True),
            user_blocks=s.int("user_blocks", min=1, max=10_000),
            item_blocks=s.int("item_blocks", min=1, max=10_000),
            seed=s.int("seed", min=0, max=2**63 - 1),
            checkpoint_interval=s.int("checkpoint_interval", min=-1, max=10_000),
            master=_checked(s, "master", MASTER, "local[N], spark://host:port, yarn or k8s://..."),
            driver_memory=_checked(s, "driver_memory", MEMORY, "a size such as 512m or 4g"),
            executor_memory=_checked(s, "executor_memory", MEMORY, "a size such as 512m or 4g"),
            staging=s.str("staging", "", empty=True),
        )


def _checked(s: Section, key: str, pattern: re.Pattern[str], expected: str) -> str:
    value = s.str(key)
    if not pattern.match(value):
        raise StageError(f"params.yaml: spark_als.{key} = {value!r}; expected {expected}")
    return value


def fit_spark_als(train: sp.csr_matrix, params: SparkAlsParams) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors), float32, in the rows and columns of `train`."""
    coo = train.tocoo()
    triples = {
        "user": coo.row.astype(np.int32),
        "item": coo.col.astype(np.int32),
        "rating": coo.data.astype(np.float32),
    }
    with (
        session(
            params.master, "recsys-spark-als", driver_memory=params.driver_memory,
            executor_memory=params.executor_memory,
            shuffle_partitions=max(params.user_blocks, params.item_blocks),
        ) as spark,
        tempfile.TemporaryDirectory(prefix="spark-als-checkpoints-") as checkpoints,
    ):  # fmt: skip
        import pandas as pd
        from pyspark.ml.recommendation import ALS

        if params.checkpoint_interval > 0:
            spark.sparkContext.setCheckpointDir(checkpoints)
        ratings = spark.createDataFrame(pd.DataFrame(triples))
        als = ALS(
            rank=params.factors,
            maxIter=params.iterations,
            regParam=params.regularization,
            alpha=params.alpha,
            implicitPrefs=True,
            numUserBlocks=params.user_blocks,
            numItemBlocks=params.item_blocks,
            seed=params.seed,
            checkpointInterval=params.checkpoint_interval,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            nonnegative=False,
        )
        try:
            model = als.fit(ratings)
            with staging_folder(params.staging, "spark_als.staging", MODEL.parent) as staged:
                uri, filesystem, folder = staged
                model.userFactors.write.parquet(f"{uri}/users")
                model.itemFactors.write.parquet(f"{uri}/items")
                users = _factors(read_parts(filesystem, f"{folder}/users"), train.shape[0],
                                 params.factors)  # fmt: skip
                items = _factors(read_parts(filesystem, f"{folder}/items"), train.shape[1],
                                 params.factors)  # fmt: skip
        except StageError:
            raise
        except Exception as exc:
            raise StageError(f"Spark ALS failed on {params.master} ({java_error(exc)})") from None
    if not np.isfinite(users).all() or not np.isfinite(items).all():
        raise StageError(
            f"Spark ALS gave non-finite factors; raise spark_als.regularization "
            f"({params.regularization:g}) or lower spark_als.alpha ({params.alpha:g})"
        )
    return users, items


def _factors(table: Any, rows: int, rank: int) -> np.ndarray:
    """MLlib's (id, features) rows (an Arrow table, or None for none) placed at their ids;
    ids it never saw stay zero."""
    out = np.zeros((rows, rank), dtype=np.float32)
    if table is not None and table.num_rows:
        ids = table["id"].to_numpy()
        features = table["features"].combine_chunks().flatten().to_numpy()
        out[ids] = features.reshape(ids.size, rank).astype(np.float32, copy=False)
    return out


class SparkAlsModel(AlsModel):
    """The spark_als family: fitted by MLlib, saved and scored as the ALS family is."""

    type = "spark_als"
    Params = SparkAlsParams

    @staticmethod
    def iterations(params: SparkAlsParams) -> int:
        return params.iterations

    @classmethod
    def preflight(cls, shape: tuple[int, int], params: SparkAlsParams, threads: int) -> None:
        return None

    @classmethod
    def fit(
        cls, train: sp.csr_matrix, params: SparkAlsParams, threads: int,
        on_iteration: Callable[[int, float | None], None] | None = None,
    ) -> SparkAlsModel:  # fmt: skip
        users, items = fit_spark_als(train, params)
        if on_iteration is not None:
            on_iteration(params.iterations, None)  # MLlib reports no per-iteration progress
        model = cls(users, items, threads, regularization=params.regularization,
                    alpha=params.alpha)  # fmt: skip
        model.losses = []
        return model
