"""The retraining loop end to end, two "days", against the local S3 server over HTTP:

day 1: a bucket prefix of daily files is imported (`dvc import-url`), and the retrain cycle
(the Makefile's `retrain` recipe, which is what .github/workflows/retrain.yml runs) reproduces,
pushes, and the gate promotes the first model to `prod`; `recsys follow` fetches it and a
service starts on it. day 2: a new file lands in the bucket; the same cycle updates the
events, retrains, and the gate scores champion and challenger on the same users and promotes
by the rule; `dvc artifacts get --stage prod` returns the promoted version, and the follower
switches the running service to it while a client hammers it: zero failed requests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from recsys.bundle import load_bundle
from tests.daily_events import WEIGHTS, day_bytes, day_name
from tests.helpers import RECSYS, ROOT, SMALL_PARAMS, make_repo_copy, run, tool_env
from tests.s3_server import S3Server
from tests.s3_server import s3_server_fixture as s3_server_fixture  # noqa: F401
from tests.served import serve, steady_load

pytestmark = [pytest.mark.s3, pytest.mark.dvc]

TOKEN = "loop-test-token"
PARAMS = {
    **SMALL_PARAMS,
    "generate": {"source": "files", "interactions_file": "events/daily"},
    "confidence": {"weights": WEIGHTS},
    "mask": {"strategy": "global_time", "cutoff": 0.5},
    "als": {"factors": 8, "iterations": 3},
    "evaluate": {"k": 10, "bootstrap_samples": 200},
    "gate": {"rule": "not_worse", "metrics": ["map_at_k", "ndcg_at_k"], "margin": 0.02},
}


def retrain_steps() -> list[str]:
    """The shell lines of the Makefile's `retrain` recipe, as the shell sees them."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^retrain:\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "no retrain target in the Makefile"
    return [line[1:].replace("$$", "$") for line in recipe.group(1).splitlines()]


def workflow_steps() -> list[str]:
    workflow = yaml.safe_load((ROOT / ".github/workflows/retrain.yml").read_text())
    steps = workflow["jobs"]["retrain"]["steps"]
    return [s["run"].strip() for s in steps if s.get("name", "").startswith("Loop: ")]


def test_workflow_runs_the_rehearsed_commands() -> None:
    assert workflow_steps() == retrain_steps()


def md5s(bundle: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}


@pytest.mark.slow  # about 2.5 minutes on 2 shared cores: 2 repros, 2 pushes, 3 fetches
def test_two_days_end_to_end(s3_server: S3Server, tmp_path: Path) -> None:
    env = s3_server.aws_env(tool_env())
    env["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "site-cache")
    env["RECSYS_ADMIN_TOKEN"] = TOKEN
    bucket = s3_server.new_bucket("loop")
    s3 = s3_server.client()

    def sh(line: str, cwd: Path) -> str:
        return run(["sh", "-c", line], cwd, env=env).stdout

    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env=env)
    repo = make_repo_copy(tmp_path / "repo", PARAMS)
    sh(f"git remote add origin {origin}", repo)
    sh(f"dvc remote modify storage url s3://{bucket}/store", repo)

    # day 1: import the prefix, then one retrain cycle
    s3.put_object(Bucket=bucket, Key=f"daily/{day_name(1)}", Body=day_bytes(1))
    sh(f"dvc import-url s3://{bucket}/daily/ events/daily", repo)
    sh("git add -A && git commit -qm 'events from S3'", repo)
    day1 = "\n".join(sh(line, repo) for line in retrain_steps())
    assert "no version in prod yet" in day1 and "promoted recsys-bundle@v0.0.1" in day1
    assert run(["gto", "show", "recsys-bundle#prod", "--ref"], repo, env=env).stdout.strip() == (
        "recsys-bundle@v0.0.1"
    )

    serving = tmp_path / "serving"
    follow = [RECSYS, "follow", "--repo", str(origin), "--serving", str(serving)]
    run([*follow, "--once"], ROOT, env=env)
    day1_bundle = load_bundle(serving / "current")

    with serve(serving / "current", tmp_path / "service.log", token=TOKEN) as server:
        assert server.get("/health").body["bundle"]["md5"] == day1_bundle.md5

        # day 2: a new file in the bucket, the same cycle
        s3.put_object(Bucket=bucket, Key=f"daily/{day_name(2)}", Body=day_bytes(2))
        day2 = "\n".join(sh(line, repo) for line in retrain_steps())
        assert "Running stage 'train'" in day2
        summary = (repo / ".dvc/tmp/gate.md").read_text()
        assert "MAP@10 champion" in summary and "NDCG@10 champion" in summary
        assert "recsys-bundle@v0.0.1 (als" in day2  # the champion came from the registry
        promoted = "promoted recsys-bundle@v0.0.2 to prod" in day2
        verdict = re.findall(r"\[([+-][0-9.]+), ([+-][0-9.]+)\]", day2)
        assert len(verdict) == 2
        holds = all(float(low) >= -PARAMS["gate"]["margin"] for low, _ in verdict)
        assert promoted == holds
        assert promoted, day2  # these params promote: the reload below is the point

        prod = tmp_path / "prod"
        run(
            ["dvc", "artifacts", "get", str(origin), "recsys-bundle", "--stage", "prod",
             "-o", str(prod)],
            tmp_path, env=env,
        )  # fmt: skip
        assert md5s(prod) == md5s(repo / "models/bundle")

        users = [str(u) for u in day1_bundle.user_ids[:50]]
        with steady_load(server, users) as load:
            switched = run(
                [*follow, "--once", "--reload", f"http://127.0.0.1:{server.port}/admin/reload"],
                ROOT,
                env=env,
            ).stdout
        assert "-> recsys-bundle@v0.0.2; POST" in switched
        assert not load.failures, load.failures[:5]
        assert load.answered > 0
        health = server.get("/health").body["bundle"]
        assert health["md5"] == load_bundle(prod).md5 != day1_bundle.md5
        again = run([*follow, "--once"], ROOT, env=env, check=False)
        assert again.returncode == 3 and "already serving" in again.stdout
