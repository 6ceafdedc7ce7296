"""Daily event files in S3 followed by DVC: `dvc import-url` brings a bucket prefix into
events/, `dvc update` picks up a new day, `dvc repro` re-runs what depends on it, and a fresh
clone reproduces the same bytes. Real dvc CLI against the local S3 server over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daily_events import WEIGHTS, day_bytes, day_name
from tests.helpers import SMALL_PARAMS, lock_outs, make_repo_copy, run, tool_env
from tests.s3_server import S3Server
from tests.s3_server import s3_server_fixture as s3_server_fixture  # noqa: F401

pytestmark = [pytest.mark.s3, pytest.mark.dvc, pytest.mark.long]

STAGES = ["generate", "confidence", "matrix", "mask", "train", "evaluate", "export"]
PARAMS = {
    **SMALL_PARAMS,
    "generate": {"source": "files", "interactions_file": "events/daily"},
    "confidence": {"weights": WEIGHTS},
    "als": {"factors": 8, "iterations": 2},
    "evaluate": {"k": 10, "bootstrap_samples": 100},
}


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_daily_files_imported_updated_and_reproduced(s3_server: S3Server, tmp_path: Path) -> None:
    env = s3_server.aws_env(tool_env())
    env["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "site-cache")
    bucket = s3_server.new_bucket("events")
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key=f"daily/{day_name(1)}", Body=day_bytes(1))

    repo = make_repo_copy(tmp_path / "repo", PARAMS)
    run(["dvc", "remote", "modify", "storage", "url", f"s3://{bucket}/store"], repo, env=env)
    run(["dvc", "import-url", f"s3://{bucket}/daily/", "events/daily"], repo, env=env)
    assert sorted(p.name for p in (repo / "events/daily").iterdir()) == [day_name(1)]
    day1 = run(["dvc", "repro"], repo, env=env)
    assert ran(day1.stdout) == STAGES
    run(["git", "add", "-A"], repo, env=env)
    run(["git", "commit", "-qm", "day 1"], repo, env=env)
    day1_hashes = lock_outs(repo)

    # nothing new in the bucket: update changes nothing, repro runs nothing
    run(["dvc", "update", "events/daily.dvc"], repo, env=env)
    assert ran(run(["dvc", "repro"], repo, env=env).stdout) == []

    s3.put_object(Bucket=bucket, Key=f"daily/{day_name(2)}", Body=day_bytes(2))
    status = run(["dvc", "status"], repo, env=env).stdout
    assert "events/daily" not in status  # DVC does not poll the bucket by itself
    run(["dvc", "update", "events/daily.dvc"], repo, env=env)
    assert sorted(p.name for p in (repo / "events/daily").iterdir()) == [
        day_name(1),
        day_name(2),
    ]
    day2 = run(["dvc", "repro"], repo, env=env)
    assert ran(day2.stdout) == STAGES  # every stage depends on the events
    day2_hashes = lock_outs(repo)
    assert day2_hashes["data/interactions.csv"] != day1_hashes["data/interactions.csv"]
    rows = (repo / "data/interactions.csv").read_text().count("\n") - 1
    assert rows == 5000
    run(["git", "add", "-A"], repo, env=env)
    run(["git", "commit", "-qm", "day 2"], repo, env=env)
    run(["dvc", "push"], repo, env=env)

    # a fresh clone: pull the imported events, reproduce every stage, same bytes
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env=env)
    run(["git", "push", "-q", str(origin), "main"], repo, env=env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env=env)
    run(["dvc", "pull", "events/daily.dvc"], clone, env=env)
    again = run(["dvc", "repro", "--force"], clone, env=env)
    assert ran(again.stdout) == STAGES
    assert lock_outs(clone) == day2_hashes
    assert run(["git", "status", "--porcelain"], clone, env=env).stdout == ""
