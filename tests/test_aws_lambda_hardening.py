"""The Lambda handler on events that are not a well-formed HTTP API request (issue 20 items
8 and 13): each gets a 4xx JSON answer from one container that keeps answering, never a
traceback; a failed bundle fetch leaves no folder behind."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from recsys.aws_lambda import fetch_bundle
from recsys.errors import StageError
from tests.served import invoke_lambda, write_bundle

ROOT = Path(__file__).resolve().parents[1]
USER = json.loads((ROOT / "tests" / "lambda_events" / "user.json").read_text())


def variant(**changes: Any) -> dict[str, Any]:
    event = json.loads(json.dumps(USER))
    for key, value in changes.items():
        if key == "method":
            event["requestContext"]["http"]["method"] = value
        elif value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


HOSTILE = {
    "bad base64": variant(isBase64Encoded=True, body="!!not base64!!"),
    "int body": variant(body=7),
    "dict body": variant(body={"items": ["sku-01"]}),
    "null headers": variant(headers=None),
    "no headers": variant(headers=...),
    "int header value": variant(headers={"accept": 1}),
    "junk cookies": variant(cookies="a=b"),
    "int cookies": variant(cookies=[1, 2]),
    "empty event": {},
    "None": None,
    "list": [USER],
    "string": "GET /health",
    "s3 event": {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}}]},
    "scheduled event": {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
    "bare v1": {"httpMethod": "GET", "path": "/health"},
    "no http": variant(requestContext={"stage": "$default"}),
    "null method": variant(method=None),
    "version 3.0": variant(version="3.0"),
    "surrogate path": variant(rawPath="/recommendations/\ud800"),
    "int isBase64Encoded": variant(isBase64Encoded=1),
}


def run_container(events: list[Any], tmp_path: Path, **env: str) -> tuple[list[dict], str]:
    """One cold container answering each event; every event in a file of its own (a lone
    surrogate such as \\ud800 survives as a JSON escape and loads back as one)."""
    files = []
    for i, event in enumerate(events):
        files.append(tmp_path / f"event-{i}.json")
        files[-1].write_text(json.dumps(event))
    return invoke_lambda(files, **env)


def test_every_hostile_event_gets_a_4xx_json_answer(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    events = [*HOSTILE.values(), USER]
    responses, log = run_container(events, tmp_path, BUNDLE_DIR=str(bundle))
    assert len(responses) == len(events)
    for name, response in zip([*HOSTILE, "valid"], responses, strict=True):
        assert response["headers"]["content-type"] == "application/json", name
        body = json.loads(response["body"])
        if name == "valid":  # the container still answers after all of them
            assert response["statusCode"] == 200 and body["source"] == "personalised"
        else:
            assert response["statusCode"] == 400, (name, response)
            assert body["error"] and "\n" not in body["error"], name
    assert "Traceback" not in log


def test_a_failed_fetch_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 item 13: each failed fetch left an empty /tmp/recsys-bundle-* folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for _ in range(2):
        with pytest.raises(StageError, match="cannot fetch recsys-bundle"):
            fetch_bundle(str(tmp_path / "no-such-repo"), stage="prod")
    assert not [p.name for p in temp.iterdir() if p.name.startswith("recsys-bundle-")]
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(StageError):
        fetch_bundle(str(tmp_path / "no-such-repo"), stage="prod", into=into)
    assert into.is_dir() and list(into.iterdir()) == []  # the caller's folder stays, empty
