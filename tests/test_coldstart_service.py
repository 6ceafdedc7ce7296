"""Newcomers with attributes, served from the bundle's cold-start model over real HTTP
(`recsys serve` on a free port) and through the Lambda handler."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsys.bundle import build_bundle, load_bundle
from recsys.coldstart import ColdStartParams, build_coldstart
from recsys.fallback import ExportParams
from recsys.families.als import AlsModel
from tests.served import ITEM_IDS, N_ITEMS, N_USERS, USER_IDS, serve
from tests.test_aws_lambda import EVENTS, body, invoke

# users u0..u59 shop on the web (items 0-24), u60..u119 at the store (items 25-49); inside
# each segment two personas favour their own half of the segment's items
SEGMENT = np.where(np.arange(N_USERS) < 60, "web", "store")
PERSONA = np.array([f"{s}-{i % 2}" for i, s in enumerate(SEGMENT)])
COLUMNS = ("SEGMENT", "PERSONA")


def favourites(segment: str, persona: str) -> np.ndarray:
    base = 0 if segment == "web" else 25
    half = int(persona[-1])
    return base + half * 12 + np.arange(12)


def write_cold_bundle(out: Path) -> Path:
    rng = np.random.default_rng(5)
    rows, cols = [], []
    for user in range(N_USERS):  # test data: 120 users
        items = rng.choice(favourites(SEGMENT[user], PERSONA[user]), 3, replace=False)
        rows += [user] * 3
        cols += items.tolist()
    dense = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(N_USERS, N_ITEMS)).toarray()
    dense[3] = 0  # u3 (web-1): known, no history
    train = sp.csr_matrix(dense.astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=4, iterations=2, random_state=0, num_threads=1)
        model.fit(train, show_progress=False)
    attributes = {"SEGMENT": SEGMENT, "PERSONA": PERSONA}
    cold = build_coldstart(train, attributes, ColdStartParams("attributes", COLUMNS, 5.0, 5), 12)
    out.mkdir(parents=True)
    build_bundle(
        out,
        AlsModel.from_factors(model.user_factors, model.item_factors, 1, 0.01, 1.0),
        train,
        USER_IDS,
        ITEM_IDS,
        None,
        ExportParams(top_n=10, fallback_size=12),
        {"params": {}, "metrics": {}, "inputs_md5": {}},
        coldstart=cold,
        user_attributes=attributes,
    )
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cold_bundle(tmp_path_factory.mktemp("coldsvc") / "bundle")


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with serve(bundle_dir, tmp_path_factory.mktemp("log") / "server.log") as srv:
        yield srv
        assert "Traceback" not in srv.output()


def ids(answer_body: dict) -> list[str]:
    return [x["item_id"] for x in answer_body["items"]]


def in_favourites(items: list[str], segment: str, persona: str) -> bool:
    return set(items) <= set(ITEM_IDS[favourites(segment, persona)].tolist())


def test_unknown_user_with_attributes_gets_their_group(server, bundle_dir: Path) -> None:
    answer = server.get("/recommendations/newbie?SEGMENT=store&PERSONA=store-1&n=6")
    assert answer.status == 200, answer.body
    assert answer.body["source"] == "fallback" and answer.body["known"] is False
    assert answer.body["cold_start"] == {"group": {"SEGMENT": "store", "PERSONA": "store-1"}}
    assert in_favourites(ids(answer.body), "store", "store-1")
    # a persona the shop never saw backs off to the segment; none at all to the root
    segment = server.get("/recommendations/newbie?SEGMENT=web&PERSONA=" + quote("new one"))
    assert segment.body["cold_start"] == {"group": {"SEGMENT": "web"}}
    assert set(ids(segment.body)) <= set(ITEM_IDS[:25].tolist())
    root = server.get("/recommendations/newbie?n=6")
    assert root.body["cold_start"] == {"group": {}}
    assert ids(root.body) == load_bundle(bundle_dir).fallback[:6].tolist()


def test_known_user_without_history_uses_the_bundles_attributes(server) -> None:
    answer = server.get("/recommendations/u3?SEGMENT=store&n=5")  # u3 is web-1 in the bundle
    assert answer.status == 200 and answer.body["known"] is True
    assert answer.body["cold_start"] == {"group": {"SEGMENT": "web", "PERSONA": "web-1"}}
    assert in_favourites(ids(answer.body), "web", "web-1")
    personalised = server.get("/recommendations/u1?SEGMENT=store")
    assert personalised.body["source"] == "personalised" and "cold_start" not in personalised.body


def test_session_with_attributes(server) -> None:
    newcomer = {"items": ["not-an-item"], "n": 5, "attributes": {"SEGMENT": "web"}}
    answer = server.post("/recommendations", newcomer)
    assert answer.status == 200, answer.body
    assert answer.body["cold_start"] == {"group": {"SEGMENT": "web"}}
    assert answer.body["unknown_items"] == ["not-an-item"]
    assert set(ids(answer.body)) <= set(ITEM_IDS[:25].tolist())
    known = server.post("/recommendations", {"items": ["sku-30"], "attributes": {"SEGMENT": "web"}})
    assert known.body["source"] == "personalised" and "cold_start" not in known.body


SEG = "attributes.SEGMENT"


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("GET", "/recommendations/x?AGE=30", None, "AGE"),
        ("GET", "/recommendations/x?SEGMENT=", None, "SEGMENT"),
        ("GET", "/recommendations/x?SEGMENT=web&SEGMENT=store", None, "SEGMENT"),
        ("GET", "/recommendations/x?SEGMENT=" + "w" * 201, None, "SEGMENT"),
        ("GET", "/recommendations/x?SEGMENT=%07web", None, "SEGMENT"),
        ("POST", "/recommendations", {"items": [], "attributes": ["web"]}, "attributes"),
        ("POST", "/recommendations", {"items": [], "attributes": {"AGE": "3"}}, "attributes.AGE"),
        ("POST", "/recommendations", {"items": [], "attributes": {"SEGMENT": 5}}, SEG),
        ("POST", "/recommendations", {"items": [], "attributes": {"SEGMENT": None}}, SEG),
    ],
)  # fmt: skip
def test_malformed_attributes_are_a_400_naming_the_field(
    server, method: str, path: str, payload: dict | None, field: str
) -> None:
    answer = server.get(path) if method == "GET" else server.post(path, payload)
    assert answer.status == 400, answer.body
    assert answer.body["field"] == field and answer.body["error"]


def test_lambda_handler_serves_newcomers(bundle_dir: Path, tmp_path: Path) -> None:
    """The same answers through API Gateway events (payload 2.0), built from the shipped
    examples with only the path, query and body changed."""
    base_get = json.loads((EVENTS / "unknown_user.json").read_text())
    base_post = json.loads((EVENTS / "session.json").read_text())
    events = {
        "newcomer": _get(base_get, "SEGMENT=store&PERSONA=store-0&n=4"),
        "bad": _get(base_get, "SEGMENT=store&REGION=north"),
        "session": _post(base_post, {"items": [], "attributes": {"SEGMENT": "store"}}),
        "bad_session": _post(base_post, {"items": [], "attributes": {"SEGMENT": ""}}),
    }
    for name, event in events.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(event))
    names = [str(tmp_path / name) for name in events]  # absolute: joined onto EVENTS as is
    responses, _ = invoke(names, BUNDLE_DIR=str(bundle_dir))
    got = dict(zip(events, responses, strict=True))
    newcomer = body(got["newcomer"])
    assert got["newcomer"]["statusCode"] == 200
    assert newcomer["cold_start"] == {"group": {"SEGMENT": "store", "PERSONA": "store-0"}}
    expected = load_bundle(bundle_dir).recommend(
        "nobody", 4, {"SEGMENT": "store", "PERSONA": "store-0"}
    )
    assert ids(newcomer) == list(expected)
    assert got["bad"]["statusCode"] == 400 and body(got["bad"])["field"] == "REGION"
    assert got["session"]["statusCode"] == 200
    assert body(got["session"])["cold_start"] == {"group": {"SEGMENT": "store"}}
    assert got["bad_session"]["statusCode"] == 400
    assert body(got["bad_session"])["field"] == "attributes.SEGMENT"


def _get(base: dict, query: str) -> dict:
    from urllib.parse import parse_qsl

    event = json.loads(json.dumps(base))
    event["rawQueryString"] = query
    event["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True))
    return event


def _post(base: dict, payload: dict) -> dict:
    event = json.loads(json.dumps(base))
    event["body"] = json.dumps(payload)
    event["headers"]["content-length"] = str(len(event["body"]))
    return event
