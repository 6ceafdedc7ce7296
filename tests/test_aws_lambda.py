"""The Lambda handler on API Gateway HTTP API (payload 2.0) events, run locally: the JSON
files under tests/lambda_events/ follow the documented event format, and each run is a
fresh Python process, like a Lambda container, answering several events in a row."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from recsys.bundle import load_bundle
from tests.served import invoke_lambda, write_bundle

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "tests" / "lambda_events"


def invoke(names: list[str], **env: str) -> tuple[list[dict[str, Any]], str]:
    return invoke_lambda([EVENTS / f"{name}.json" for name in names], **env)


def body(response: dict[str, Any]) -> Any:
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("lambda") / "bundle")


def test_events_answered_like_the_http_service(bundle_dir: Path) -> None:
    names = [
        "health", "user", "unknown_user", "session", "session_base64", "similar", "metadata",
        "bad_n", "bad_body", "unknown_item",
    ]  # fmt: skip
    responses, log = invoke(names, BUNDLE_DIR=str(bundle_dir))
    got = dict(zip(names, responses, strict=True))
    bundle = load_bundle(bundle_dir)
    for name, response in got.items():
        assert response["headers"]["content-type"] == "application/json", name
        assert not response["isBase64Encoded"], name
    assert got["health"]["statusCode"] == 200
    assert body(got["health"])["bundle"]["md5"] == bundle.md5

    user = body(got["user"])
    assert got["user"]["statusCode"] == 200 and user["source"] == "personalised"
    assert [x["item_id"] for x in user["items"]] == list(bundle.recommend("u1", 3))
    assert {"category", "style", "price", "description", "score"} <= set(user["items"][0])
    unknown = body(got["unknown_user"])
    assert unknown["source"] == "fallback" and len(unknown["items"]) == 2

    expected, _ = bundle.recommend_session(["sku-01", "sku-07"], 4)
    for name in ("session", "session_base64"):
        session = body(got[name])
        assert got[name]["statusCode"] == 200 and session["unknown_items"] == ["nope"]
        assert [x["item_id"] for x in session["items"]] == list(expected)
    similar = body(got["similar"])
    assert [x["item_id"] for x in similar["items"]] == list(bundle.similar_items("sku-05", 2))
    assert body(got["metadata"])["model"]["family"] == "als"

    assert got["bad_n"]["statusCode"] == 400 and body(got["bad_n"])["field"] == "n"
    assert got["bad_body"]["statusCode"] == 400 and "items[0] = 1" in body(got["bad_body"])["error"]
    assert got["unknown_item"]["statusCode"] == 404
    # loaded once for the container, not per invocation
    assert log.count("cold start: serving bundle") == 1, log
    assert "Traceback" not in log


def test_named_api_gateway_stage_is_stripped(bundle_dir: Path) -> None:
    (response,), _ = invoke(
        ["named_stage"], BUNDLE_DIR=str(bundle_dir), RECSYS_API_BASE_PATH="/prod"
    )
    assert response["statusCode"] == 200 and body(response)["user_id"] == "u1"


def test_no_bundle_is_a_503_naming_the_cause_and_retried(tmp_path: Path) -> None:
    (health, user), log = invoke(["health", "user"])
    assert health["statusCode"] == 503 and user["statusCode"] == 503
    assert "set BUNDLE_DIR" in body(health)["error"] and "RECSYS_BUNDLE_REPO" in body(user)["error"]
    assert log.count("cold start:") == 2  # each invocation tries again
    (missing,), _ = invoke(["user"], BUNDLE_DIR=str(tmp_path / "absent"))
    assert missing["statusCode"] == 503 and "no bundle directory" in body(missing)["error"]
