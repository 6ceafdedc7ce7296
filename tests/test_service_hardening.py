"""Hostile operators and clients against the real `recsys serve` (issue 20): files changed
under a running server, malformed bundles, slow and oversized requests, forged Host headers,
and a bad command line. Every case gets one clear line or a 4xx JSON answer, never a dead
server, a traceback or an answer from files other than the ones /health reports."""

from __future__ import annotations

import contextlib
import json
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
from tests.helpers import RECSYS, ROOT
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


# --------------------------------------------------------------------------- server limits


def raw(port: int, data: bytes, wait: float = 10.0, then: bytes = b"") -> tuple[int, dict, float]:
    """Send `data` (then `then` after 0.2 s) on a fresh connection and read until the server
    closes it: (status, JSON body, seconds until closed). Fails if it is never closed."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if data:
            # a server that answers before the request ends (431) may close while a slow
            # client is still sending: its answer is what counts
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
        if then:
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                sock.sendall(then)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    elapsed = time.monotonic() - start
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:300]
    return int(head.split()[1]), json.loads(body), elapsed


@pytest.fixture(scope="module")
def limited(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("limited") / "server.log"
    args = ("--request-timeout", "1", "--allowed-hosts", "shop.example,*.internal,127.0.0.1")
    with serve(bundles["a"], log, args=args) as srv:
        yield srv
    assert "Traceback" not in srv.output()


def test_a_body_that_stops_is_cut_off_with_a_408(limited) -> None:
    """Issue 20 item 5: a chunked POST whose body stops after 5 bytes was held open > 70 s."""
    head = (
        b"POST /recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n5\r\n{"ite'
    )
    status, body, elapsed = raw(limited.port, head)
    assert status == 408 and "within 1 s" in body["error"] and elapsed < 5


@pytest.mark.parametrize(
    "data", [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaa", b""], ids=["half", "none"]
)
def test_a_half_sent_head_or_silence_is_cut_off_with_a_408(limited, data: bytes) -> None:
    status, body, elapsed = raw(limited.port, data)
    assert status == 408 and elapsed < 5


def test_an_oversized_head_is_a_431_before_it_is_buffered(limited) -> None:
    """Issue 20 item 6: a 1 MB header was answered 200; unfinished 10 MB headers grew the
    server by 400 MB. Now the head is capped (16 KiB by default)."""
    big = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    status, body, _ = raw(limited.port, big)
    assert status == 431 and "16,384 bytes" in body["error"]
    unfinished = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000
    assert raw(limited.port, unfinished)[0] == 431
    path = b"GET /recommendations/" + b"u" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    status, body, _ = raw(limited.port, path)  # httptools refuses it first, in our shape
    assert status in (400, 431) and body["error"]
    assert limited.get("/health").status == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /health HTTP/9.9x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["content-length", "cl-and-te", "version", "tls"],
)
def test_malformed_http_gets_the_json_error_shape(limited, head: bytes) -> None:
    """Issue 20 item 12: uvicorn answered malformed HTTP with a plain-text 400."""
    status, body, _ = raw(limited.port, head)
    assert status == 400 and body["error"].startswith("malformed HTTP request")


def test_no_redirect_echoes_the_host_and_unknown_hosts_are_refused(limited) -> None:
    """Issue 20 item 11: `GET /recommendations/` with `Host: evil.example` was a 307 to
    http://evil.example/recommendations."""
    for host in (b"127.0.0.1", b"shop.example"):
        req = b"GET /recommendations/ HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        status, body, _ = raw(limited.port, req)
        assert status == 404 and "no such endpoint" in body["error"]
    for host in (b"evil.example", b"shop.example.evil", b"internal", b""):
        req = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        status, body, _ = raw(limited.port, req)
        assert status == 400 and body["field"] == "host", host
    for host in (b"shop.example:8000", b"api.internal", b"SHOP.EXAMPLE."):
        req = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        assert raw(limited.port, req)[0] == 200, host


def test_connections_over_the_limit_are_refused_then_served_again(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """Issue 20 item 5: 20,000 half-sent heads exhausted the open files; a normal request
    then failed with a reset and nothing logged."""
    args = ("--max-connections", "4", "--request-timeout", "30")
    with serve(bundles["a"], tmp_path / "server.log", args=args) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        try:
            for sock in idle:
                sock.sendall(b"GET /health HTTP/1.1\r\n")  # half a head each
            time.sleep(0.3)
            status, body, elapsed = raw(srv.port, b"")
            assert status == 503 and "too many open connections" in body["error"]
            assert elapsed < 5
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, OSError):
                if srv.get("/health").status == 200:
                    break
            time.sleep(0.1)
        assert srv.get("/health").status == 200
        assert "refusing connections: 4 open, the limit is 4" in srv.output()
    assert "Traceback" not in srv.output()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request-timeout", "0"], "--request-timeout 0"),
        (["--max-header-bytes", "10"], "--max-header-bytes 10"),
        (["--max-connections", "0"], "--max-connections 0"),
        (["--keep-alive", "-1"], "--keep-alive -1"),
        (["--snapshot-dir", "/nonexistent/dir"], "--snapshot-dir /nonexistent/dir"),
    ],
)
def test_bad_limits_are_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [RECSYS, "serve", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {message}")
