"""Hostile operators and clients against the real `recsys serve` (issue 20): files changed
under a running server, malformed bundles, slow and oversized requests, forged Host headers,
and a bad command line. Every case gets one clear line or a 4xx JSON answer, never a dead
server, a traceback or an answer from files other than the ones /health reports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.bundle import load_bundle
from recsys.errors import StageError
from tests.conftest import RECSYS, ROOT
from tests.served import N_USERS, serve, write_bundle

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = [f"u{i}" for i in range(N_USERS)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hardening")
    return {"a": write_bundle(base / "a", seed=0), "b": write_bundle(base / "b", seed=1)}


def answers(srv, users: list[str] = USERS) -> dict[str, list[str]]:
    client = srv.client()
    try:
        out = {}
        for user in users:
            got = client.get(f"/recommendations/{user}?n=5")
            assert got.status == 200, got
            out[user] = [x["item_id"] for x in got.body["items"]]
        return out
    finally:
        client.close()


def expected(bundle_dir: Path) -> dict[str, list[str]]:
    bundle = load_bundle(bundle_dir)
    return {user: list(bundle.recommend(user, 5)) for user in USERS}


def served_md5(srv) -> str:
    return srv.get("/health").body["bundle"]["md5"]


# --------------------------------------------------------------------------- the snapshot


def test_truncating_the_served_files_neither_kills_nor_reaches_the_server(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """Issue 20 item 1: `truncate -s 4096` on the served bundle, then requests touching
    every user's row: the mapped live file gave SIGBUS (exit 135)."""
    live, snap = tmp_path / "bundle", tmp_path / "snap"
    shutil.copytree(bundles["a"], live)
    snap.mkdir()
    md5 = load_bundle(live).md5
    with serve(live, tmp_path / "server.log", TOKEN, args=("--snapshot-dir", str(snap))) as srv:
        assert list(snap.iterdir()) == []  # the private copy has no name left on disk
        for name in ("recommendations.npz", "ids.npz", "model.npz"):
            os.truncate(live / name, 4096)
        assert answers(srv) == expected(bundles["a"])
        session = srv.post("/recommendations", {"items": ["sku-02", "sku-09"], "n": 5})
        assert session.status == 200
        refused = srv.post("/admin/reload", headers=AUTH)
        assert refused.status == 409 and "corrupt" in refused.body["error"]
        assert str(live) in refused.body["error"] and str(snap) not in refused.body["error"]
        assert served_md5(srv) == md5 and srv.proc.poll() is None
        assert list(snap.iterdir()) == []  # nor does a refused one
    assert "Traceback" not in srv.output()


def test_files_copied_over_the_bundle_are_served_only_after_a_reload(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """Issue 20 item 2: `cp other/* B/` over the served bundle made /recommendations answer
    from the new files while /health and /metadata reported the old version."""
    live = tmp_path / "bundle"
    shutil.copytree(bundles["a"], live)
    a_md5, b_md5 = load_bundle(bundles["a"]).md5, load_bundle(bundles["b"]).md5
    want_a, want_b = expected(bundles["a"]), expected(bundles["b"])
    assert want_a != want_b
    with serve(live, tmp_path / "server.log", TOKEN) as srv:
        for file in sorted(bundles["b"].iterdir()):
            shutil.copyfile(file, live / file.name)  # in place, as cp does: same inodes
        assert answers(srv) == want_a
        assert served_md5(srv) == a_md5
        assert srv.get("/metadata").body["training_data"] == {"md5": "train-md5-0"}
        reloaded = srv.post("/admin/reload", headers=AUTH)
        assert reloaded.status == 200 and reloaded.body["bundle"]["md5"] == b_md5
        assert answers(srv) == want_b
        assert srv.get("/metadata").body["training_data"] == {"md5": "train-md5-1"}
    assert "Traceback" not in srv.output()


def test_snapshot_load_names_the_bundle_and_leaves_nothing(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    bundle = load_bundle(bundles["a"], snapshot_dir=snap)
    assert bundle.md5 == load_bundle(bundles["a"]).md5 and list(snap.iterdir()) == []
    assert list(bundle.recommend("u1", 5)) == list(load_bundle(bundles["a"]).recommend("u1", 5))
    broken = tmp_path / "broken"
    shutil.copytree(bundles["a"], broken)
    (broken / "ids.npz").write_bytes(b"PK")
    with pytest.raises(StageError, match=f"{broken}/ids.npz: corrupt"):
        load_bundle(broken, snapshot_dir=snap)
    assert list(snap.iterdir()) == []


# --------------------------------------------------------------------------- deep metadata


@pytest.fixture()
def deep_bundle(bundles: dict[str, Path], tmp_path: Path) -> Path:
    """Issue 20 item 9: a bundle whose metadata.json nests 200,000 levels deep."""
    deep = tmp_path / "deep"
    shutil.copytree(bundles["a"], deep)
    (deep / "metadata.json").write_text("[" * 200_000 + "]" * 200_000)
    return deep


def test_deeply_nested_metadata_is_one_line(deep_bundle: Path) -> None:
    with pytest.raises(StageError, match="nested"):
        load_bundle(deep_bundle)
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.recommend", "--bundle", str(deep_bundle), "u1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "metadata.json" in proc.stderr


def test_deep_metadata_reload_is_a_409_and_sighup_logs_it(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    live = tmp_path / "bundle"
    shutil.copytree(bundles["a"], live)
    md5 = load_bundle(live).md5
    with serve(live, tmp_path / "server.log", TOKEN) as srv:
        for text in ("[" * 200_000 + "]" * 200_000, '{"a":' * 40 + "1" + "}" * 40):
            (live / "metadata.json").write_text(text)
            refused = srv.post("/admin/reload", headers=AUTH)
            assert refused.status == 409 and "nested" in refused.body["error"], refused
            assert refused.body["serving"]["md5"] == md5
        srv.hup()
        deadline = time.monotonic() + 20
        while "SIGHUP: bundle" not in srv.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "SIGHUP: bundle" in srv.output() and "nested" in srv.output()
        assert served_md5(srv) == md5
    assert "Traceback" not in srv.output()


# --------------------------------------------------------------------------- the port


@pytest.mark.parametrize(
    ("env_port", "args", "message"),
    [
        ("abc", [], "$PORT = 'abc'"),
        ("", ["--port", "99999"], "--port = '99999'"),
        ("8080", ["--port", "x1"], "--port = 'x1'"),
    ],
)
def test_bad_port_is_one_line(env_port: str, args: list[str], message: str) -> None:
    """Issue 20 item 10: `PORT=abc recsys serve` was a traceback."""
    proc = subprocess.run(
        [RECSYS, "serve", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": env_port},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr


def test_port_option_wins_over_the_environment(bundles: dict[str, Path], tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": "abc", "BUNDLE_DIR": str(bundles["a"])}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RECSYS, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(log.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
