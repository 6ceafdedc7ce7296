"""The S3 remote end to end: real `dvc`/`git` CLI against moto's S3 server over HTTP.

A small-params copy of the project is reproduced once, pushed to a bucket and to a bare git
"origin"; fresh clones then pull it back, share an experiment, and meet the faults users hit
(server down, wrong credentials, missing bucket).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml

from tests.helpers import copy_reproduced, recsys, run, tool_env
from tests.s3_server import S3Server, private_s3_server, s3_dev
from tests.s3_server import s3_server_fixture as s3_server_fixture  # noqa: F401

pytestmark = [pytest.mark.s3, pytest.mark.dvc, pytest.mark.long]

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_DIRS = ("data", "models", "metrics")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def snapshot(repo: Path) -> dict[str, str]:
    """relpath -> md5 of every file under the pipeline's output directories."""
    return {
        str(p.relative_to(repo)): md5(p)
        for d in WORKSPACE_DIRS
        for p in sorted((repo / d).rglob("*"))
        if p.is_file()
    }


def uncached_outs(repo: Path) -> set[str]:
    """Outputs dvc.yaml marks `cache: false`: kept in git, never pushed to the remote."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        path
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
        if isinstance(entry, dict)
        for path, flags in entry.items()
        if (flags or {}).get("cache") is False
    }


def lock_outs(repo: Path) -> dict[str, str]:
    """Cached output path -> md5 recorded in dvc.lock (directories end in `.dir`)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    skip = uncached_outs(repo)
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] not in skip
    }


def cache_file(repo: Path, md5_hash: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5_hash[:2] / md5_hash[2:]


def expected_files(repo: Path) -> dict[str, str]:
    """Every file dvc.lock promises (directories expanded through their cached manifest)."""
    files: dict[str, str] = {}
    for path, md5_hash in lock_outs(repo).items():
        if not md5_hash.endswith(".dir"):
            files[path] = md5_hash
            continue
        manifest = cache_file(repo, md5_hash)
        # A directory's hash is the md5 of its manifest: proves the manifest itself arrived intact.
        assert md5(manifest) == md5_hash.removesuffix(".dir"), f"corrupt manifest for {path}"
        for entry in json.loads(manifest.read_text()):
            files[f"{path}/{entry['relpath']}"] = entry["md5"]
    return files


@dataclass(frozen=True)
class Published:
    """The project reproduced once, its data in `bucket`, its commits in bare `origin`.

    `env` reaches the server through AWS_ENDPOINT_URL_S3 and the key pair in AWS_* variables
    (the environment route in docs/s3-and-ci.md), so a fresh clone needs no local config at all.
    """

    repo: Path
    origin: Path
    bucket: str
    server: S3Server
    env: dict[str, str]

    def clone(self, dest: Path, with_pulled_data: bool = False) -> Path:
        """A fresh git clone; optionally with the workspace and cache a `dvc pull` leaves."""
        run(["git", "clone", "-q", str(self.origin), str(dest)], dest.parent, env=self.env)
        if with_pulled_data:  # the pull itself is tested once, copying saves a round trip
            for name in ("data", "models", ".dvc/cache"):
                shutil.copytree(self.repo / name, dest / name, dirs_exist_ok=True)
        return dest


def dvc(
    repo: Path, *args: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(["dvc", *args], repo, check=check, env=env)


@pytest.fixture(scope="module")
def published(
    s3_server: S3Server,
    reproduced_template: tuple[Path, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Published:
    """The reproduced small copy with its remote in a new bucket, pushed, and its git history
    in a bare origin (the one reproduction of the run is reused, not redone)."""
    base = tmp_path_factory.mktemp("s3-remote")
    env = s3_server.aws_env(tool_env())
    env["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint
    env["DVC_SITE_CACHE_DIR"] = str(base / "site-cache")
    bucket = s3_server.new_bucket("recsys")
    repo = copy_reproduced(reproduced_template[0], base / "repo")
    dvc(repo, "remote", "modify", "storage", "url", f"s3://{bucket}/store", env=env)
    run(["git", "commit", "-qam", "remote in the test bucket"], repo, env=env)
    push = dvc(repo, "push", env=env)
    assert "pushed" in push.stdout, push.stdout
    origin = base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base, env=env)
    run(["git", "remote", "add", "origin", str(origin)], repo, env=env)
    run(["git", "push", "-q", "origin", "main"], repo, env=env)
    return Published(repo=repo, origin=origin, bucket=bucket, server=s3_server, env=env)


def test_push_then_fresh_clone_pull_restores_identical_outputs(
    published: Published, tmp_path: Path
) -> None:
    outs = lock_outs(published.repo)
    stored = published.server.keys(published.bucket, "store/files/md5/")
    stored_hashes = {key.split("/")[-2] + key.split("/")[-1] for key in stored}
    assert set(outs.values()) <= stored_hashes  # every output (and dir manifest) is in S3

    clone = published.clone(tmp_path / "clone")
    assert not any((clone / path).exists() for path in outs)
    pull = dvc(clone, "pull", env=published.env)
    assert "fetched" in pull.stdout, pull.stdout

    expected = expected_files(clone)
    assert len(expected) > len(outs)  # the bundle directory contributed its files
    for path, md5_hash in expected.items():
        assert md5(clone / path) == md5_hash, path
    tracked = {p: h for p, h in snapshot(published.repo).items() if p in expected}
    assert tracked == {p: h for p, h in snapshot(clone).items() if p in expected}


def test_experiment_pushed_from_one_clone_is_applied_in_another(
    published: Published, tmp_path: Path
) -> None:
    env = published.env
    author = published.clone(tmp_path / "author", with_pulled_data=True)
    dvc(author, "exp", "run", "-n", "factors-4", "-S", "als.factors=4", env=env)
    exp_model = md5(author / "models/als.npz")
    baseline_model = lock_outs(published.repo)["models/als.npz"]
    assert exp_model != baseline_model

    push = dvc(author, "exp", "push", "origin", "factors-4", env=env)
    assert "factors-4" in push.stdout + push.stderr
    assert cache_file(author, exp_model).is_file()
    stored = published.server.keys(published.bucket, f"store/files/md5/{exp_model[:2]}/")
    assert f"store/files/md5/{exp_model[:2]}/{exp_model[2:]}" in stored

    reader = published.clone(tmp_path / "reader")
    dvc(reader, "exp", "pull", "origin", "factors-4", env=env)
    assert cache_file(reader, exp_model).is_file()  # came from S3: this clone never trained
    dvc(reader, "exp", "apply", "factors-4", env=env)
    assert md5(reader / "models/als.npz") == exp_model
    params = yaml.safe_load((reader / "params.yaml").read_text())
    assert params["als"]["factors"] == 4
    with np.load(reader / "models/als.npz", allow_pickle=False) as model:
        assert model["item_factors"].shape[1] == 4
        assert model["user_factors"].shape[1] == 4
    assert snapshot(reader) == snapshot(author)


# fault -> (phrases one of which `dvc push` must print, the same for `dvc pull`); a wrong
# secret shows as a signature mismatch or a bare 403, depending on the request DVC makes first.
FAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "server_down": (("Could not connect to the endpoint URL",),) * 2,
    "missing_bucket": (("The specified bucket does not exist",),) * 2,
    "wrong_credentials": (("signature we calculated does not match", "Forbidden"),) * 2,
}


def says(proc: subprocess.CompletedProcess[str], phrases: tuple[str, ...]) -> bool:
    """Failed, with one of phrases on stderr and no traceback."""
    err = proc.stderr
    return proc.returncode != 0 and any(p in err for p in phrases) and "Traceback" not in err


@pytest.mark.parametrize("fault", list(FAULTS))
def test_remote_faults_fail_clearly_and_leave_local_files_alone(
    published: Published, tmp_path: Path, fault: str
) -> None:
    env = dict(published.env)
    env["AWS_MAX_ATTEMPTS"] = "1"  # botocore's default retries add ~10 s per unreachable call
    repo = published.clone(tmp_path / "clone", with_pulled_data=True)
    before = snapshot(repo)
    assert set(expected_files(repo)) <= set(before)
    push_phrases, pull_phrases = FAULTS[fault]

    def push_and_pull_fail(fault_env: dict[str, str]) -> None:
        push = dvc(repo, "push", env=fault_env, check=False)
        assert says(push, push_phrases), push.stderr
        shutil.rmtree(repo / ".dvc" / "cache")  # so pull has to fetch from the remote
        pull = dvc(repo, "pull", env=fault_env, check=False)
        assert says(pull, pull_phrases), pull.stderr
        assert snapshot(repo) == before

    if fault == "server_down":
        push_and_pull_fail(env | {"AWS_ENDPOINT_URL_S3": s3_dev.endpoint_for(s3_dev.free_port())})
    elif fault == "missing_bucket":
        # What `dvc remote modify --local storage url s3://<typo>/store` writes.
        url = f"s3://missing-{published.bucket}/store"
        (repo / ".dvc" / "config.local").write_text(f"['remote \"storage\"']\n    url = {url}\n")
        push_and_pull_fail(env)
    else:
        # IAM checks are a switch of the whole server: on a server of this test's own, so the
        # tests that share the session's server in parallel keep working meanwhile.
        with private_s3_server(tmp_path / "iam-server") as server:
            # Another URL than the one the clone pulled from: DVC keys what it knows of a
            # remote by protocol and path, not by endpoint.
            bucket = f"iam-{published.bucket}"
            s3_dev.ensure_bucket(server.endpoint, bucket)
            (repo / ".dvc" / "config.local").write_text(
                f"['remote \"storage\"']\n    url = s3://{bucket}/store\n"
            )
            with server.enforcing_credentials() as (key, secret):
                good = env | {
                    "AWS_ENDPOINT_URL_S3": server.endpoint,
                    "AWS_ACCESS_KEY_ID": key,
                    "AWS_SECRET_ACCESS_KEY": secret,
                }
                # the data on this server too, for the control
                assert "pushed" in dvc(repo, "push", env=good).stdout
                push_and_pull_fail(good | {"AWS_SECRET_ACCESS_KEY": secret[:-1] + "x"})
                # Control: the same server takes the right key, so the failure was the key.
                assert "fetched" in dvc(repo, "pull", env=good).stdout
    assert snapshot(repo) == before


def test_s3_dev_script_starts_points_the_remote_and_stops(
    s3_server: S3Server, tmp_path: Path
) -> None:
    env = s3_server.aws_env(tool_env()) | {"PYTHON": sys.executable}
    # No key pair in the environment: the push below must get it from .dvc/config.local.
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    repo = tmp_path / "dev"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo, env=env)
    dvc(repo, "init", "-q", env=env)
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    # A developer's own settings for the real bucket must survive start/stop.
    own = "['remote \"storage\"']\n    region = eu-west-1\n    access_key_id = AKIAOWNKEY\n"
    (repo / ".dvc" / "config.local").write_text(own)
    bucket = urlparse(dvc(repo, "remote", "list", env=env).stdout.split()[1]).netloc

    def s3dev(*args: str) -> subprocess.CompletedProcess[str]:
        return recsys("s3-dev", *args, cwd=repo, env=env)

    def local_remote() -> dict[str, str]:
        lines = (repo / ".dvc" / "config.local").read_text().splitlines()
        return dict(ln.strip().split(" = ", 1) for ln in lines if " = " in ln)

    busy = s3dev("start", "--port", s3_server.endpoint.rsplit(":", 1)[1])
    assert busy.returncode == 2 and "already in use" in busy.stderr, busy.stderr
    assert busy.stderr.count("\n") == 1 and local_remote()["access_key_id"] == "AKIAOWNKEY"

    port = s3_dev.free_port()
    endpoint = s3_dev.endpoint_for(port)
    try:
        start = s3dev("start", "--port", str(port))
        assert start.returncode == 0, start.stderr
        assert f"export AWS_ENDPOINT_URL_S3={endpoint}" in start.stdout
        assert local_remote() == {
            "region": "eu-west-1",
            "access_key_id": s3_dev.ACCESS_KEY_ID,
            "endpointurl": endpoint,
            "secret_access_key": s3_dev.SECRET_ACCESS_KEY,
        }
        state = json.loads((repo / ".dvc/tmp/s3-dev/state.json").read_text())

        again = s3dev("start")
        assert again.returncode == 0 and f"already running (pid {state['pid']})" in again.stdout
        other = s3dev("start", "--port", str(s3_dev.free_port()))
        assert other.returncode == 2 and "already running on port" in other.stderr
        # A second remote would outlive the server `stop` shuts down: refused, nothing set.
        dvc(repo, "remote", "add", "backup", f"s3://{bucket}/backup", env=env)
        second = s3dev("start", "--remote", "backup")
        assert second.returncode == 2, second.stderr
        assert "remote 'storage'" in second.stderr and second.stderr.count("\n") == 1
        assert "backup" not in (repo / ".dvc" / "config.local").read_text()
        assert s3_dev.read_state(repo)["remote"] == "storage"

        (repo / "sample.txt").write_text("pushed through s3-dev\n")
        dvc(repo, "add", "-q", "sample.txt", env=env)
        dvc(repo, "push", env=env)
        sample = md5(repo / "sample.txt")
        keys = S3Server(endpoint=endpoint, log=s3_server.log).keys(bucket)
        assert f"store/files/md5/{sample[:2]}/{sample[2:]}" in keys
    finally:
        stop = s3dev("stop")
        leftover = s3_dev.read_state(repo)
        if leftover and s3_dev.is_moto(leftover["pid"]):
            s3_dev.terminate(leftover["pid"])
    assert stop.returncode == 0, stop.stderr
    assert not s3_dev.answers(endpoint)
    assert local_remote() == {"region": "eu-west-1", "access_key_id": "AKIAOWNKEY"}
    assert not (repo / ".dvc/tmp/s3-dev/state.json").exists()
    stop_again = s3dev("stop")
    assert stop_again.returncode == 0 and "not running" in stop_again.stdout
