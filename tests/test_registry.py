"""The model registry the DVC way, end to end against the local S3 server: the bundle is a
`model` artifact in dvc.yaml, versions and stages are GTO git tags, `dvc artifacts get`
fetches the `prod` version from the remote into a fresh folder, and the service serves it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.bundle import load_bundle
from tests.helpers import ROOT, run, set_params, tool_env
from tests.s3_server import S3Server
from tests.s3_server import s3_server_fixture as s3_server_fixture  # noqa: F401
from tests.served import serve

pytestmark = [pytest.mark.s3, pytest.mark.dvc]

ARTIFACT = "recsys-bundle"


def files_md5(bundle: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}


def test_dvc_yaml_declares_the_bundle_as_a_model_artifact() -> None:
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    assert artifacts[ARTIFACT]["type"] == "model"
    assert artifacts[ARTIFACT]["path"] == "models/bundle"


def test_register_promote_fetch_prod_from_s3_and_serve(
    s3_server: S3Server, reproduced_copy: Path, tmp_path: Path
) -> None:
    env = s3_server.aws_env(tool_env())
    env["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "site-cache")
    bucket = s3_server.new_bucket("registry")

    def sh(*args: str, cwd: Path) -> str:
        return run(list(args), cwd, env=env).stdout

    repo = reproduced_copy
    origin = tmp_path / "origin.git"
    sh("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    sh("git", "remote", "add", "origin", str(origin), cwd=repo)
    sh("dvc", "remote", "modify", "storage", "url", f"s3://{bucket}/store", cwd=repo)

    def release(version: str) -> dict[str, str]:
        """Reproduce, commit, push data and commits, register the bundle as `version`."""
        sh("dvc", "repro", cwd=repo)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", f"model {version}", cwd=repo)
        sh("dvc", "push", cwd=repo)
        out = sh("gto", "register", ARTIFACT, "HEAD", "--version", version, cwd=repo)
        assert f"{ARTIFACT}@{version}" in out, out
        return files_md5(repo / "models/bundle")

    v1 = release("v1.0.0")
    sh("gto", "assign", ARTIFACT, "--version", "v1.0.0", "--stage", "prod", cwd=repo)
    set_params(repo, {"als": {"factors": 6}})  # a newer version that is not (yet) in prod
    v2 = release("v1.1.0")
    assert v1 != v2
    sh("git", "push", "-q", "origin", "main", "--tags", cwd=repo)
    assert sh("gto", "show", f"{ARTIFACT}#prod", "--ref", cwd=repo).strip() == f"{ARTIFACT}@v1.0.0"

    # Another machine: only the git URL and the remote's credentials, no checkout, no cache.
    fresh = tmp_path / "deploy"
    fresh.mkdir()
    proc = run(
        ["dvc", "artifacts", "get", str(origin), ARTIFACT, "--stage", "prod", "-o", "bundle"],
        fresh,
        env=env,
    )
    assert "Downloaded" in proc.stdout, proc.stdout + proc.stderr
    assert files_md5(fresh / "bundle") == v1
    latest = fresh / "latest"
    run(["dvc", "artifacts", "get", str(origin), ARTIFACT, "-o", str(latest)], fresh, env=env)
    assert files_md5(latest) == v2  # no stage or version: the latest registered version
    bundle = load_bundle(fresh / "bundle")

    with serve(fresh / "bundle", tmp_path / "server.log") as server:
        health = server.get("/health")
        assert health.body["bundle"]["md5"] == bundle.md5
        user = bundle.user_ids[0]
        answer = server.get(f"/recommendations/{user}?n=3")
        assert answer.status == 200
        assert [x["item_id"] for x in answer.body["items"]] == list(bundle.recommend(user, 3))

    # The Lambda handler fetches the same prod version itself at cold start.
    event = ROOT / "tests" / "lambda_events" / "health.json"
    lambda_env = {k: v for k, v in env.items() if k != "BUNDLE_DIR"}
    lambda_env |= {
        "PYTHONPATH": str(ROOT),
        "RECSYS_BUNDLE_REPO": str(origin),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from recsys.aws_lambda import handler; "
            "print(json.dumps(handler(json.load(open(sys.argv[1])), None)))",
            str(event),
        ],
        cwd=ROOT,
        env={**lambda_env, "PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    response = json.loads(proc.stdout)
    health = json.loads(response["body"])
    assert response["statusCode"] == 200, health
    assert health["bundle"]["md5"] == bundle.md5
    assert health["bundle"]["version"] == f"{ARTIFACT}#prod"
    assert os.path.commonpath([health["bundle"]["path"], str(tmp_path)]) == str(tmp_path)
