"""The HTTP service, driven over real HTTP: `recsys serve` on a free port."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from recsys.bundle import load_bundle
from tests.helpers import ROOT
from tests.served import N_USERS, Client, serve, write_bundle

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("service")
    return {
        "a": write_bundle(base / "a", seed=0),
        "b": write_bundle(base / "b", seed=1),
        "small": write_bundle(base / "small", seed=2, top_n=5),
    }


@pytest.fixture(scope="module")
def server(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    with serve(bundles["a"], tmp_path_factory.mktemp("log") / "server.log", TOKEN) as srv:
        yield srv
        assert "Traceback" not in srv.output()


def test_health_and_metadata(server, bundles: dict[str, Path]) -> None:
    bundle = load_bundle(bundles["a"])
    health = server.get("/health")
    assert health.status == 200 and health.body["status"] == "ok"
    assert health.body["bundle"]["md5"] == bundle.md5
    assert health.body["bundle"]["version"] == bundle.md5[:12]
    meta = server.get("/metadata")
    assert meta.status == 200
    assert meta.body["model"] == {
        "family": "als",
        "params": {"als": {"alpha": 1.0, "regularization": 0.01, "factors": 6}},
    }
    assert meta.body["metrics"] == {"map_at_k": 0.5}
    assert meta.body["training_data"] == {"md5": "train-md5-0"}
    assert meta.body["limits"]["max_n"] == 10


def test_known_user_gets_scored_items_with_metadata(server, bundles: dict[str, Path]) -> None:
    bundle = load_bundle(bundles["a"])
    answer = server.get("/recommendations/u1?n=4")
    assert answer.status == 200
    expected = bundle.recommend("u1", 4)
    assert answer.body["user_id"] == "u1" and answer.body["source"] == "personalised"
    items = answer.body["items"]
    assert [x["item_id"] for x in items] == list(expected)
    assert [x["score"] for x in items] == pytest.approx(expected.scores, abs=1e-6)
    index = int(items[0]["item_id"].removeprefix("sku-"))
    assert items[0] == {
        "item_id": items[0]["item_id"],
        "score": items[0]["score"],
        "category": f"cat{index % 4}",
        "style": f"style{index % 7}",
        "price": index + 0.5,
        "description": f"Item {index}",
    }
    default = server.get("/recommendations/u1")
    assert len(default.body["items"]) == 10


@pytest.mark.parametrize("user", ["nobody", "u3"])
def test_unknown_and_history_less_users_get_the_fallback(server, bundles, user: str) -> None:
    answer = server.get(f"/recommendations/{user}?n=3")
    assert answer.status == 200 and answer.body["source"] == "fallback"
    assert [x["item_id"] for x in answer.body["items"]] == load_bundle(bundles["a"]).fallback[
        :3
    ].tolist()
    assert all(x["score"] is None and x["category"] for x in answer.body["items"])


def test_anonymous_session(server, bundles: dict[str, Path]) -> None:
    bundle = load_bundle(bundles["a"])
    body = {"items": ["sku-01", "nope", "sku-07", "sku-01"], "n": 5}
    answer = server.post("/recommendations", body)
    assert answer.status == 200, answer.body
    expected, unknown = bundle.recommend_session(body["items"], 5)
    assert answer.body["source"] == "personalised" and answer.body["unknown_items"] == unknown
    assert unknown == ["nope"]
    assert [x["item_id"] for x in answer.body["items"]] == list(expected)
    assert not {"sku-01", "sku-07"} & {x["item_id"] for x in answer.body["items"]}
    cold = server.post("/recommendations", {"items": ["x", "y"]})
    assert cold.status == 200 and cold.body["source"] == "fallback"
    assert cold.body["unknown_items"] == ["x", "y"] and len(cold.body["items"]) == 10


def test_similar_items(server, bundles: dict[str, Path]) -> None:
    answer = server.get("/items/sku-05/similar?n=3")
    assert answer.status == 200
    expected = load_bundle(bundles["a"]).similar_items("sku-05", 3)
    assert [x["item_id"] for x in answer.body["items"]] == list(expected)
    assert answer.body["item"]["category"] == "cat1"


BAD_REQUESTS = [
    ("GET", "/recommendations/u1?n=0", None, 400, "n", "expected an integer in [1, 10]"),
    ("GET", "/recommendations/u1?n=-2", None, 400, "n", "expected an integer"),
    ("GET", "/recommendations/u1?n=11", None, 400, "n", "n = 11"),
    ("GET", "/recommendations/u1?n=ten", None, 400, "n", "n = 'ten'"),
    ("GET", "/recommendations/u1?n=1&n=2", None, 400, "n", "more than once"),
    ("GET", "/recommendations/u1?count=2", None, 400, "count", "unknown query parameter"),
    ("GET", "/recommendations/" + "x" * 300, None, 400, "user_id", "expected 1 to 256"),
    ("GET", "/items/sku-99/similar", None, 404, "item_id", "'sku-99' is not in the bundle"),
    ("GET", "/items/sku-01/similar?n=99", None, 400, "n", "n = 99"),
    ("POST", "/recommendations", b"{not json", 400, "body", "not valid JSON"),
    ("POST", "/recommendations", b"", 400, "body", "empty body"),
    ("POST", "/recommendations", b"[1, 2]", 400, "body", "expected a JSON object"),
    ("POST", "/recommendations", b'{"item": ["a"]}', 400, "item", "unknown field 'item'"),
    ("POST", "/recommendations", b'{"items": "sku-01"}', 400, "items", "list of ITEM_ID"),
    ("POST", "/recommendations", b'{"items": ["a", 7]}', 400, "items", "items[1] = 7"),
    ("POST", "/recommendations", b'{"items": ["a"], "n": 0}', 400, "n", "n = 0"),
    ("POST", "/recommendations", b'{"items": ["a"], "n": "3"}', 400, "n", 'n = "3"'),
    ("POST", "/recommendations", b'{"items": ["a"], "n": true}', 400, "n", "n = true"),
    (
        "POST",
        "/recommendations",
        b'{"items": [], "n": 99}',
        400,
        "n",
        "99",
    ),
    ("POST", "/recommendations", b'{"items": [' + b'"a",' * 600 + b'"a"]}', 400, "items", "601"),
    ("POST", "/recommendations", b'{"items": ["' + b"a" * 70_000 + b'"]}', 413, "body", "65,536"),
    ("GET", "/nowhere", None, 404, None, "no such endpoint"),
    ("DELETE", "/recommendations/u1", None, 405, None, "not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "phrase"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_json_error_naming_the_problem(
    server, method: str, path: str, body: bytes | None, status: int, field, phrase: str
) -> None:
    client = server.client()
    try:
        answer = client.request(method, path, body)
    finally:
        client.close()
    assert answer.status == status, answer.raw[:300]
    assert phrase in answer.body["error"], answer.body
    assert answer.body.get("field") == field
    assert b"Traceback" not in answer.raw


def test_chunked_oversized_body_is_refused(server) -> None:
    """No Content-Length to trust: the body is cut off while it streams in."""
    client = server.client()
    try:
        client.conn.putrequest("POST", "/recommendations")
        client.conn.putheader("Transfer-Encoding", "chunked")
        client.conn.endheaders()
        chunk = b"a" * 16_384
        for _ in range(6):
            client.conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        client.conn.send(b"0\r\n\r\n")
        response = client.conn.getresponse()
        assert response.status == 413 and b"body over" in response.read()
    finally:
        client.close()


def test_admin_reload_needs_the_token(server, tmp_path: Path) -> None:
    assert server.post("/admin/reload").status == 401
    wrong = server.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.body["field"] == "authorization"
    with serve(server_bundle(server), tmp_path / "off.log") as plain:  # no token: disabled
        off = plain.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert off.status == 404 and "RECSYS_ADMIN_TOKEN" in off.body["error"]


def server_bundle(server) -> Path:
    return Path(server.get("/health").body["bundle"]["path"])


def test_health_is_503_until_a_bundle_arrives_then_sighup_loads_it(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "bundle"
    with serve(target, tmp_path / "server.log", wait=False) as srv:
        health = srv.get("/health")
        assert health.status == 503 and "no bundle directory" in health.body["error"]
        recs = srv.get("/recommendations/u1")
        assert recs.status == 503 and "no bundle loaded" in recs.body["error"]
        shutil.copytree(bundles["b"], target)
        srv.hup()
        assert srv.wait_health(200).body["bundle"]["md5"] == load_bundle(bundles["b"]).md5
        assert "Traceback" not in srv.output()


def swap_dir(source: Path, target: Path) -> None:
    """Replace a bundle directory the way export does: a rename, never half-written."""
    staging = target.parent / f".{target.name}.new"
    shutil.copytree(source, staging)
    old = target.parent / f".{target.name}.old"
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old)


def test_hot_swap_under_concurrent_load(bundles: dict[str, Path], tmp_path: Path) -> None:
    """8 clients hammer the server while the bundle is swapped by SIGHUP and by the admin
    call, a corrupt and an incompatible bundle are refused: no request fails, every answer
    comes whole from one bundle, and the refused ones never serve."""
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    users = [f"u{i}" for i in range(N_USERS)] + ["stranger"]
    answers = {
        name: {u: list(bd.recommend(u, 5)) for u in users} for name, bd in (("a", a), ("b", b))
    }
    sessions = {
        name: list(bd.recommend_session(["sku-02", "sku-09"], 5)[0])
        for name, bd in (("a", a), ("b", b))
    }
    assert any(answers["a"][u] != answers["b"][u] for u in users)

    live = tmp_path / "bundle"
    shutil.copytree(bundles["a"], live)
    stop = threading.Event()
    seen: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        client = Client(srv.port)
        i = worker
        try:
            while not stop.is_set():
                i += 1
                if i % 4 == 0:
                    got = client.request(
                        "POST", "/recommendations", {"items": ["sku-02", "sku-09"], "n": 5}
                    )
                    options = dict(sessions)
                else:
                    user = users[i % len(users)]
                    got = client.get(f"/recommendations/{user}?n=5")
                    options = {k: v[user] for k, v in answers.items()}
                items = [x["item_id"] for x in got.body["items"]] if got.status == 200 else None
                match = [k for k, v in options.items() if v == items]
                with lock:
                    if got.status != 200 or not match:
                        failures.append(f"{got.status} {got.raw[:200]!r}")
                    else:
                        seen.update(match[:1] if len(match) == 1 else ["either"])
        except Exception as exc:  # a dropped connection is a failure too
            with lock:
                failures.append(repr(exc))
        finally:
            client.close()

    with serve(live, tmp_path / "server.log", TOKEN) as srv:
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            swap_dir(bundles["b"], live)
            srv.hup()
            srv.wait_health(200, md5=b.md5)
            time.sleep(0.5)
            # corrupt: a truncated file arrives (replaced, as dvc checkout/pull replace files;
            # a file a server maps is never rewritten in place) -> refused, b keeps serving
            broken = live / ".recommendations.npz.tmp"
            broken.write_bytes(b"PK\x03\x04 truncated")
            os.replace(broken, live / "recommendations.npz")
            refused = srv.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert refused.status == 409 and "recommendations.npz: corrupt" in refused.body["error"]
            assert refused.body["serving"]["md5"] == b.md5
            time.sleep(0.3)
            # incompatible: serves fewer items per answer than clients may ask for
            swap_dir(bundles["small"], live)
            refused = srv.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert refused.status == 409 and "serves n <= 5" in refused.body["error"]
            srv.hup()  # the same refusal through the signal: logged, nothing changes
            time.sleep(0.3)
            swap_dir(bundles["a"], live)
            back = srv.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert back.status == 200 and back.body["bundle"]["md5"] == a.md5
            assert back.body["previous"]["md5"] == b.md5
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        log = srv.output()
    assert not failures, failures[:5]
    assert seen["a"] > 50 and seen["b"] > 50, seen
    assert log.count("refused") >= 3 and "Traceback" not in log, log


def test_load_benchmark_client_reads_every_answer(server, bundles: dict[str, Path]) -> None:
    """scripts/bench_service.py's own HTTP client against the real server: each scheduled
    request is answered once, an error answer (400) is counted by its status without
    upsetting the next answer on the same connection, and swaps during the run fail none."""
    spec = importlib.util.spec_from_file_location(
        "bench_service", ROOT / "scripts" / "bench_service.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    host = f"127.0.0.1:{server.port}"
    pool = bench.Workload(bundles["a"], (0.6, 0.2, 0.2)).pool(host, size=64)
    assert {r.kind for r in pool} == {"known", "unknown", "session"}
    target = bench.Target("127.0.0.1", server.port, TOKEN, server.proc.pid)

    bad = "/recommendations/u1?n=0"
    mixed = [bench.Request("bad", "GET", bad, None, bench.http_request("GET", bad, host))]
    result = bench.run(bench.run_load(target, mixed + pool[:3], 200, 0.2, 2))
    assert result.error_kinds == {"400": 10} and len(result.latencies_ms) == 30

    result = bench.run(bench.run_load(target, pool, 100, 1.5, 4, swap_every=0.5))
    assert result.errors == 0, result.error_kinds
    assert len(result.latencies_ms) == 150 and result.swaps == 2  # admin reload, then SIGHUP
    assert result.generator_cpu_s > 0
    server.wait_health(200)
