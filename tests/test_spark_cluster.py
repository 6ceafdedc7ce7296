"""A real Spark standalone cluster: a master and two workers on 127.0.0.1, started from the
installed pyspark once for this module (its tests share one pytest-xdist worker); `dvc repro`
submits the confidence aggregation and a spark_als train to it, and the same runs on
local[2] give the same bytes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.io import load_npz, md5sum
from tests.helpers import copy_reproduced, lock_outs, run, set_params

pytestmark = [pytest.mark.dvc, pytest.mark.long]

WORKERS = 2
SMALL_SPARK_ALS = {
    "factors": 8, "iterations": 3, "regularization": 0.01, "alpha": 20.0, "user_blocks": 2,
    "item_blocks": 2, "seed": 42, "checkpoint_interval": 2, "driver_memory": "1g",
    "executor_memory": "512m",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class(*args: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    import pyspark

    home = Path(pyspark.__file__).parent
    with log.open("w") as out:
        return subprocess.Popen(
            [str(home / "bin" / "spark-class"), *args], env={**env, "SPARK_HOME": str(home)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def alive_workers(ui: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`spark://127.0.0.1:PORT` of a running master with two one-core workers."""
    root = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root),
           "SPARK_WORKER_DIR": str(root / "work")}  # fmt: skip
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [
        spark_class(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
            log=root / "master.log",
            env=env,
        )  # fmt: skip
    ]
    try:
        for i in range(WORKERS):
            procs.append(
                spark_class(
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--webui-port",
                    str(free_port()),
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    url,
                    log=root / f"worker{i}.log",
                    env=env,
                )  # fmt: skip
            )
        deadline = time.monotonic() + 180
        while alive_workers(ui) < WORKERS:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join(p.read_text()[-1500:] for p in sorted(root.glob("*.log")))
                raise AssertionError(f"the Spark cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield url
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=60)


def test_confidence_on_the_cluster_keeps_the_data_hashes(
    spark_cluster: str, reproduced_template: tuple[Path, str], tmp_path: Path
) -> None:
    repo = copy_reproduced(reproduced_template[0], tmp_path / "repo")
    before = lock_outs(repo, "confidence", "matrix")
    set_params(repo, {"engine": {"name": "spark", "spark_master": spark_cluster,
                                 "spark_executor_memory": "512m"}})  # fmt: skip
    proc = run(["dvc", "repro"], repo)
    assert "confidence (spark): 12,000 events" in proc.stdout
    assert "Running stage 'matrix'" not in proc.stdout  # same bytes: nothing after re-runs
    assert lock_outs(repo, "confidence", "matrix") == before


def test_spark_als_trains_on_the_cluster_and_local_gives_the_same_bytes(
    spark_cluster: str, reproduced_template: tuple[Path, str], tmp_path: Path
) -> None:
    """train -> evaluate -> export with model.type spark_als on the cluster; then the same
    params on local[2] (same blocks, same seed) write the same model file."""
    repo = copy_reproduced(reproduced_template[0], tmp_path / "repo")
    set_params(repo, {"model": {"type": "spark_als"},
                      "spark_als": SMALL_SPARK_ALS | {"master": spark_cluster}})  # fmt: skip
    proc = run(["dvc", "repro"], repo)
    for stage in ("train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in proc.stdout
    assert "train: spark_als on " in proc.stdout
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert 0 < metrics["map_at_k"] <= 1  # quality is benchmarked, not gated, at rank 8
    model = repo / "models/spark_als.npz"
    on_cluster = md5sum(model)
    factors = load_npz(model)
    assert str(factors["family"]) == "spark_als"
    train_shape = load_npz(repo / "data/train.npz")["shape"]
    assert factors["user_factors"].shape == (train_shape[0], 8)
    assert np.isfinite(factors["item_factors"]).all() and factors["item_factors"].any()

    set_params(repo, {"spark_als": {"master": "local[2]"}})
    run(["dvc", "repro", "train"], repo)
    assert md5sum(model) == on_cluster
