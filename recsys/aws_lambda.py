"""AWS Lambda entry point: the HTTP service's app behind API Gateway (HTTP API, payload 2.0).

Handler: `recsys.aws_lambda.handler`. The same Starlette app as `recsys.service`, adapted by
Mangum, so a Lambda answers exactly what `make serve` answers. The bundle is loaded once per
container, on the first invocation, from:

- `BUNDLE_DIR`: a bundle directory shipped in the image (or a layer); else
- the model registry: `RECSYS_BUNDLE_REPO` (git URL of this project), the artifact
  `RECSYS_BUNDLE_ARTIFACT` (default `recsys-bundle`, declared in dvc.yaml) at the GTO stage
  `RECSYS_BUNDLE_STAGE` (default `prod`) or the version `RECSYS_BUNDLE_VERSION` (`v1.2.0`),
  fetched from the DVC remote into /tmp as `dvc artifacts get` does (S3 credentials from the
  function's role; an S3-compatible store through `AWS_ENDPOINT_URL_S3`).

A bundle that cannot be fetched or loaded makes every answer a 503 JSON error naming the
cause; the next invocation tries again. `RECSYS_API_BASE_PATH` strips a named API Gateway
stage from paths (`/prod/recommendations/17` -> `/recommendations/17`). No admin endpoint:
a new bundle reaches Lambda as a new deployment (or a new container).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from recsys.errors import StageError
from recsys.service import BUNDLE_ENV, BundleSlot, create_app, limit_threads

log = logging.getLogger("recsys.service")

DEFAULT_ARTIFACT = "recsys-bundle"
DEFAULT_STAGE = "prod"


def fetch_bundle(
    repo: str,
    artifact: str = DEFAULT_ARTIFACT,
    stage: str | None = DEFAULT_STAGE,
    version: str | None = None,
    into: Path | str | None = None,
) -> Path:
    """Download a registered bundle version (or the one a stage points to) from the DVC
    remote; return its directory. What `dvc artifacts get REPO ARTIFACT --stage S` does: GTO
    tags resolve the git revision, the revision's dvc.yaml the path, the remote the files."""
    from dvc.exceptions import DvcException
    from dvc.repo.artifacts import Artifacts

    if version and stage:
        stage = None  # a version names one bundle exactly
    base = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="recsys-bundle-"))
    out = base / "bundle"
    if out.exists():
        shutil.rmtree(out)
    try:
        Artifacts.get(repo, artifact, version=version, stage=stage, out=str(out), force=True)
    except DvcException as exc:
        # a failed fetch leaves nothing behind: each retry would add one more folder
        shutil.rmtree(out if into is not None else base, ignore_errors=True)
        where = f"version {version}" if version else f"stage {stage}"
        cause = exc.__cause__ or exc
        raise StageError(f"cannot fetch {artifact} ({where}) from {repo}: {cause}") from None
    return out


class _Container:
    """What one Lambda container keeps between invocations."""

    def __init__(self) -> None:
        self.slot: BundleSlot | None = None
        self.adapter: Any = None

    def bundle_source(self) -> tuple[Path, str | None]:
        local = os.environ.get(BUNDLE_ENV, "").strip()
        if local:
            return Path(local), None
        repo = os.environ.get("RECSYS_BUNDLE_REPO", "").strip()
        if not repo:
            raise StageError(f"set {BUNDLE_ENV} (a bundle directory) or RECSYS_BUNDLE_REPO")
        artifact = os.environ.get("RECSYS_BUNDLE_ARTIFACT", "").strip() or DEFAULT_ARTIFACT
        version = os.environ.get("RECSYS_BUNDLE_VERSION", "").strip() or None
        stage = (
            None
            if version
            else (os.environ.get("RECSYS_BUNDLE_STAGE", "").strip() or DEFAULT_STAGE)
        )
        path = fetch_bundle(repo, artifact, stage=stage, version=version)
        return path, f"{artifact}@{version}" if version else f"{artifact}#{stage}"

    def ensure(self) -> Any:
        """The Mangum adapter, built once; the bundle loaded unless it is already."""
        if self.adapter is None:
            from mangum import Mangum

            limit_threads()
            # no snapshot: the image is read-only, a fetched bundle is this container's own
            # /tmp, and nothing reloads; a copy would only double the /tmp it needs
            self.slot = BundleSlot(os.environ.get(BUNDLE_ENV) or "unset", snapshot=False)
            base_path = os.environ.get("RECSYS_API_BASE_PATH", "").strip() or "/"
            app = create_app(self.slot, admin_token=None, load_on_startup=False)
            # lifespan off: Mangum would run it on every invocation, the bundle loads once.
            self.adapter = Mangum(app, lifespan="off", api_gateway_base_path=base_path)
        slot = self.slot
        assert slot is not None
        if slot.current is None:
            try:
                path, label = self.bundle_source()
                slot.path, slot.version_label = path, label
                slot.load("cold start")
            except StageError as exc:  # answered as 503 by the app, logged once per try
                slot.last_error = str(exc)
                log.error("cold start: %s", exc)
        return self.adapter


_CONTAINER = _Container()


def _answer(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """An API Gateway (payload 2.0) response carrying the service's JSON error shape."""
    body: dict[str, Any] = {"error": message} | ({"field": field} if field else {})
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _utf8(value: Any) -> bool:
    """A str that encodes to UTF-8 (no lone surrogates such as \\ud800)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_event(event: Any) -> tuple[str, str] | None:
    """(what is wrong, field) for an event that is not an HTTP API payload 2.0 request the
    app can answer; None for a good one. Mangum raises on these, and a traceback is no
    answer: S3 or scheduled events, v1 payloads and hand-made test events get a 400."""
    expected = "an API Gateway HTTP API event (payload format 2.0)"
    if not isinstance(event, dict):
        return f"event is {type(event).__name__}; expected {expected}", "event"
    if event.get("version") != "2.0":
        return f"event version {str(event.get('version'))[:20]!r}; expected {expected}", "version"
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    if not isinstance(http, dict):
        return f"requestContext.http missing; expected {expected}", "requestContext"
    method = http.get("method")
    if not (_utf8(method) and method.isascii() and method.isalpha()):
        return "requestContext.http.method: expected an HTTP method such as GET", "method"
    path = event.get("rawPath", http.get("path"))
    if not (_utf8(path) and path.startswith("/")):
        return "rawPath: expected a UTF-8 path starting with /", "rawPath"
    if not _utf8(event.get("rawQueryString", "")):
        return "rawQueryString: expected a UTF-8 string", "rawQueryString"
    headers = event.get("headers")
    if not (isinstance(headers, dict) and all(_utf8(k) and _utf8(v) for k, v in headers.items())):
        return "headers: expected an object of string names to string values", "headers"
    cookies = event.get("cookies")
    if cookies is not None and not (
        isinstance(cookies, list) and all(_utf8(c) and ";" not in c for c in cookies)
    ):
        return "cookies: expected a list of name=value strings", "cookies"
    body = event.get("body")
    if body is not None and not _utf8(body):
        return "body: expected a string (or null)", "body"
    encoded = event.get("isBase64Encoded", False)
    if not isinstance(encoded, bool):
        return "isBase64Encoded: expected true or false", "isBase64Encoded"
    if encoded and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body: isBase64Encoded is true but the body is not base64", "body"
    return None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda handler for API Gateway HTTP API events (payload format 2.0). Any other event
    is a 400 JSON answer; an unexpected failure a 500 JSON answer, logged in one line."""
    if not logging.getLogger().handlers:  # the Lambda runtime installs one; locally, stderr
        logging.basicConfig()
    log.setLevel(logging.INFO)
    problem = check_event(event)
    if problem is not None:
        log.warning("event refused: %s", problem[0])
        return _answer(400, *problem)
    try:
        return _CONTAINER.ensure()(event, context)
    except Exception as exc:  # never a traceback as the answer
        log.error("event failed: %s: %s", type(exc).__name__, str(exc)[:200])
        return _answer(500, "internal error; the function's log has the details")
