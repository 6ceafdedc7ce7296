"""The service follows prod: `recsys follow` keeps SERVING/current on the
registry's prod version (GTO tags, data by `dvc artifacts get` from the DVC remote) and
makes a running service reload it, with zero failed requests meanwhile."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from recsys.bundle import load_bundle
from tests.helpers import RECSYS, ROOT, run, set_params, tool_env
from tests.served import serve, steady_load

pytestmark = pytest.mark.dvc

TOKEN = "follow-test-token"


def follow(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**tool_env(), "PYTHONPATH": str(ROOT)}
    env.pop("RECSYS_ADMIN_TOKEN", None)
    if token:
        env["RECSYS_ADMIN_TOKEN"] = token
    return subprocess.run(
        [RECSYS, "follow", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def release(repo: Path, message: str) -> str:
    """Commit the reproduced outputs, push the data, put HEAD in prod; the new version."""
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    run(["dvc", "push"], repo)
    run(["gto", "assign", "recsys-bundle", "HEAD", "--stage", "prod"], repo)
    return run(["gto", "show", "recsys-bundle#prod", "--ref"], repo).stdout.strip()


def test_follow_switches_a_running_service_to_the_new_prod(
    reproduced_copy: Path, tmp_path: Path
) -> None:
    repo = reproduced_copy
    run(["dvc", "remote", "add", "-f", "-d", "local", str(tmp_path / "storage")], repo)
    v1 = release(repo, "local remote")
    serving = tmp_path / "serving"
    common = ["--repo", str(repo), "--serving", str(serving), "--once"]

    first = follow(*common)
    assert first.returncode == 0, first.stderr
    assert os.readlink(serving / "current") == v1
    assert follow(*common).returncode == 3  # already on prod: nothing fetched, nothing sent

    with serve(serving / "current", tmp_path / "service.log", token=TOKEN) as server:
        old = server.get("/health").body["bundle"]["md5"]
        set_params(repo, {"export": {"top_n": 12}})  # a new bundle; only export re-runs
        v2 = release(repo, "top 12")
        assert v2 != v1
        users = [str(u) for u in load_bundle(serving / "current").user_ids[:40]]
        with steady_load(server, users) as load:
            url = f"http://127.0.0.1:{server.port}/admin/reload"
            switched = follow(*common, "--reload", url)
        assert switched.returncode == 0, switched.stderr
        assert f"-> {v2}; POST" in switched.stdout
        assert not load.failures, load.failures[:5]
        assert load.answered > 0
        new = server.get("/health").body["bundle"]["md5"]
        assert new == load_bundle(repo / "models/bundle").md5 != old
        assert os.readlink(serving / "current") == v2
        assert (serving / v1).is_dir()  # the previous version stays for a quick way back


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (["--serving", "s"], TOKEN, "the following arguments are required: --repo"),
        (["--repo", ".", "--serving", "s", "--interval", "0"], TOKEN, "--interval 0"),
        (["--repo", "/no/such/repo", "--serving", "s", "--once"], TOKEN, "gto show"),
    ],
)
def test_follow_errors_are_one_line_exit_2(args, token, message, tmp_path: Path) -> None:
    proc = follow(*[str(tmp_path / a) if a == "s" else a for a in args], token=token)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
