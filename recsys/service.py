"""The HTTP service over an exported bundle: an ASGI app (Starlette) run by uvicorn.

    recsys serve [--host 127.0.0.1] [--port 8000] [--bundle models/bundle]

Endpoints (JSON in, JSON out):

    GET  /health                          200 with the bundle's version once loaded, 503 before
    GET  /recommendations/{user_id}?n=10  a user's precomputed top-n, or the labelled fallback
                                          (&SEGMENT=web&...: a newcomer's cold-start attributes)
    POST /recommendations                 {"items": [ITEM_ID, ...], "n": 10}: an anonymous session
                                          (optional "attributes": {"SEGMENT": "web", ...})
    GET  /items/{item_id}/similar?n=10    the most similar items
    GET  /metadata                        model family, params, metrics, training data hash
    POST /admin/reload                    load the bundle again (Bearer RECSYS_ADMIN_TOKEN)

Every answer is computed from one bundle reference taken when the request starts, so a hot
swap (SIGHUP or /admin/reload) never mixes two bundles in one answer and requests already
running finish on the old one. A new bundle is loaded and verified (every file's md5) beside
the old one, off the event loop, and replaces it in one assignment; a corrupt or incompatible
one is refused, logged, and the old one keeps serving. Each load copies the files into a
private snapshot (`--snapshot-dir`, hashed while copied, unlinked once mapped), so a file
changed on disk reaches answers only through a verified reload. Bad input is a 4xx JSON
`{"error": ..., "field": ...}` naming the field and what was expected, never a traceback.

Per request the work is small: a dict lookup and a slice for known users (precomputed
top-N), one small linear solve and one matrix-vector product for sessions and similar
items, on one BLAS thread (`limit_threads`), inside the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from recsys.bundle import Bundle, Recommendations, load_bundle
from recsys.coldstart import parse_attributes
from recsys.commands import CommandParser
from recsys.errors import FieldError, StageError, UnknownIdError
from recsys.ids import MAX_ID_LENGTH
from recsys.paths import BUNDLE, TRAIN

if TYPE_CHECKING:
    from recsys.http_limits import Limits

log = logging.getLogger("recsys.service")

BUNDLE_ENV = "BUNDLE_DIR"  # the bundle directory (default models/bundle)
ADMIN_TOKEN_ENV = "RECSYS_ADMIN_TOKEN"  # unset or empty: /admin/reload is disabled
SNAPSHOT_ENV = "RECSYS_SNAPSHOT_DIR"  # where loaded bundles are copied (default: temp dir)
HOSTS_ENV = "RECSYS_ALLOWED_HOSTS"  # comma-separated Host names served (default: any)
DEFAULT_N = 10
MAX_BODY_BYTES = 64 * 1024  # a session body larger than this is refused (413)
MAX_SESSION_ITEMS = 500  # items in one anonymous session


class ServiceError(Exception):
    """A request the client can fix (4xx) or a state it can wait out (503), as JSON."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str, field: str | None = None) -> JSON:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSON(body, status_code=status)


def limit_threads() -> None:
    """One BLAS thread for the whole process: each request is a tiny solve or product, and
    the event loop (plus uvicorn) already keeps the cores busy under load."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")


# --------------------------------------------------------------------------- bundle slot


@dataclass(frozen=True)
class Loaded:
    """A bundle in service, with where it came from and when."""

    bundle: Bundle
    path: str
    version: str
    loaded_at: float

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "md5": self.bundle.md5,
            "path": self.path,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "users": int(self.bundle.user_ids.size),
            "items": int(self.bundle.item_ids.size),
            "max_n": self.bundle.max_n,
        }


class BundleSlot:
    """The bundle the service answers from, swapped whole.

    `current` is replaced by one assignment (atomic in Python), so a request that took the
    old reference keeps using it to the end. Reloads are serialised by a lock.
    """

    def __init__(
        self,
        path: Path | str,
        version: str | None = None,
        snapshot: bool = True,
        snapshot_dir: Path | str | None = None,
    ) -> None:
        self.path = Path(path)
        self.version_label = version  # e.g. the registry version fetched; else md5[:12]
        # serve from a private, verified copy (load_bundle's snapshot_dir): files changed
        # on disk reach the process only through a reload; None dir: the system temp dir
        self.snapshot_dir = (snapshot_dir or tempfile.gettempdir()) if snapshot else None
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self.loading = False
        self._lock = threading.Lock()

    def require(self) -> Bundle:
        loaded = self.current
        if loaded is None:
            state = "loading" if self.loading else f"unavailable: {self.last_error}"
            raise ServiceError(503, f"no bundle loaded yet ({state})")
        return loaded.bundle

    def load(self, reason: str = "reload") -> Loaded:
        """Load and verify the bundle directory, then swap it in; StageError if refused."""
        with self._lock:
            self.loading = True
            old = self.current
            try:
                new = load_bundle(self.path, snapshot_dir=self.snapshot_dir)
                check_compatible(new, old.bundle if old else None)
            except (StageError, OSError, MemoryError, ValueError, RecursionError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                keeps = f"; still serving {old.version}" if old else ""
                log.error("%s: bundle %s refused: %s%s", reason, self.path, self.last_error, keeps)
                raise StageError(self.last_error) from None
            finally:
                self.loading = False
            label = self.version_label if old is None and self.version_label else new.version
            loaded = Loaded(new, str(self.path), label, time.time())
            self.current = loaded
            self.last_error = None
            was = f" (was {old.version})" if old else ""
            log.info("%s: serving bundle %s from %s%s", reason, loaded.version, self.path, was)
            return loaded

    async def load_async(self, reason: str) -> Loaded:
        """`load` in a worker thread, so the event loop keeps answering meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(None, self.load, reason)


def check_compatible(new: Bundle, old: Bundle | None) -> None:
    """Refuse a bundle that cannot answer what the one in service answers."""
    if old is not None and new.max_n < old.max_n:
        raise StageError(
            f"the bundle serves n <= {new.max_n}, the one in service n <= {old.max_n}; "
            "clients may ask for more: restart the service to accept a smaller limit"
        )


# --------------------------------------------------------------------------- request parsing


def parse_n(value: str | None, bundle: Bundle, field: str = "n") -> int:
    if value is None:
        return min(DEFAULT_N, bundle.max_n)
    expected = f"expected an integer in [1, {bundle.max_n}]"
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ServiceError(400, f"{field} = {value[:40]!r}; {expected}", field)
    n = int(text)
    if not 1 <= n <= bundle.max_n:
        raise ServiceError(400, f"{field} = {n}; {expected}", field)
    return n


def check_query(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    params = request.query_params
    for key in params:
        if key not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise ServiceError(
                400, f"unknown query parameter {key[:40]!r}; expected {expected}", key[:40]
            )
        if len(params.getlist(key)) > 1:
            raise ServiceError(400, f"query parameter {key!r} given more than once", key)
    return dict(params)


def check_id(field: str, value: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH:
        raise ServiceError(
            400, f"{field} of {len(value)} characters; expected 1 to {MAX_ID_LENGTH}", field
        )
    return value


async def read_json_body(request: Request) -> Any:
    """The body as JSON, refusing more than MAX_BODY_BYTES before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "Content-Length is not a number", "body")
        if int(declared) > MAX_BODY_BYTES:
            raise ServiceError(
                413, f"body of {int(declared):,} bytes; expected at most {MAX_BODY_BYTES:,}", "body"
            )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ServiceError(413, f"body over {MAX_BODY_BYTES:,} bytes", "body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServiceError(400, "the client closed the connection mid-body", "body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise ServiceError(400, 'empty body; expected JSON like {"items": ["ITEM_ID"]}', "body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, f"body is not valid JSON ({exc})", "body") from None


def parse_session(body: Any, bundle: Bundle) -> tuple[list[str], int]:
    if not isinstance(body, dict):
        raise ServiceError(
            400, 'body: expected a JSON object like {"items": [...], "n": 10}', "body"
        )
    for key in body:
        if key not in ("items", "n", "attributes"):
            raise ServiceError(
                400,
                f"unknown field {str(key)[:40]!r}; expected items, n, attributes",
                str(key)[:40],
            )
    items = body.get("items")
    if not isinstance(items, list):
        raise ServiceError(400, "items: expected a list of ITEM_ID strings", "items")
    if len(items) > MAX_SESSION_ITEMS:
        raise ServiceError(
            400, f"items: {len(items)} ids; expected at most {MAX_SESSION_ITEMS}", "items"
        )
    for i, item in enumerate(items):
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_ID_LENGTH:
            shown = orjson.dumps(item)[:40].decode(errors="replace")
            raise ServiceError(
                400,
                f"items[{i}] = {shown}; expected an ITEM_ID string of 1 to {MAX_ID_LENGTH} "
                "characters",
                "items",
            )
    n = body.get("n", min(DEFAULT_N, bundle.max_n))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= bundle.max_n:
        shown = orjson.dumps(n)[:40].decode(errors="replace")
        raise ServiceError(400, f"n = {shown}; expected an integer in [1, {bundle.max_n}]", "n")
    return items, n


def newcomer_attributes(given: Any, bundle: Bundle, prefix: str = "") -> dict[str, str]:
    """A newcomer's attributes (query parameters or the session body's `attributes`
    object), checked against the bundle's cold-start columns; 400 naming the field."""
    if not isinstance(given, dict):
        raise ServiceError(
            400, 'attributes: expected an object like {"SEGMENT": "web"}', "attributes"
        )
    columns = bundle.coldstart.columns if bundle.coldstart is not None else ()
    return parse_attributes(given, columns, prefix)  # FieldError: a 400 naming the field


def cold_start_info(recs: Recommendations) -> dict[str, Any]:
    """The `cold_start` field of an answer from the cold-start model: the group's attributes."""
    return {} if recs.group is None else {"cold_start": {"group": recs.group}}


def item_list(bundle: Bundle, recs: Recommendations) -> list[dict[str, Any]]:
    scores = recs.scores if recs.scores is not None else [None] * len(recs)
    return [
        {"item_id": item, "score": None if score is None else round(score, 6)} | meta
        for item, score, meta in zip(recs, scores, bundle.item_metadata(recs), strict=True)
    ]


# --------------------------------------------------------------------------- the app

Handler = Callable[[Request], Awaitable[Response]]


def endpoint(func: Handler) -> Handler:
    """Map ServiceError, UnknownIdError (404), FieldError and StageError (400) to their
    JSON answer and anything unexpected to a plain 500 (logged with its traceback here,
    never sent to the client)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await func(request)
        except ServiceError as exc:
            return error_response(exc.status, exc.message, exc.field)
        except UnknownIdError as exc:
            return error_response(404, str(exc), exc.field)
        except FieldError as exc:
            return error_response(400, str(exc), exc.field)
        except StageError as exc:
            return error_response(400, str(exc))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, "internal error; the service log has the details")

    return wrapped


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether the Host header's name (port dropped) matches `allowed`: exact names,
    `*.example.com` for subdomains, `*` for any."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    for pattern in allowed:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class HostCheck:
    """Refuse a request whose Host header names no allowed host (400 JSON), before routing:
    nothing the app builds (URLs, logs) can then carry a name the client chose."""

    def __init__(self, app: Any, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = [h.strip().lower().rstrip(".") for h in allowed if h.strip()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), b"")
            text = host.decode("latin-1")
            if not host_allowed(text, self.allowed):
                response = error_response(
                    400,
                    f"Host {text[:80]!r} is not served here; expected one of "
                    f"{', '.join(self.allowed)} (--allowed-hosts)",
                    "host",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Handlers are module-level functions over the app's state (`request.app.state`): the
# bundle slot, and the admin token (None: /admin/reload is disabled).


def slot_of(request: Request) -> BundleSlot:
    return request.app.state.slot


@endpoint
async def health(request: Request) -> Response:
    check_query(request, ())
    slot = slot_of(request)
    loaded = slot.current
    if loaded is None:
        status = "loading" if slot.loading or slot.last_error is None else "unavailable"
        return JSON({"status": status, "error": slot.last_error}, status_code=503)
    return JSON({"status": "ok", "bundle": loaded.info()})


@endpoint
async def user_recommendations(request: Request) -> Response:
    bundle = slot_of(request).require()
    columns = bundle.coldstart.columns if bundle.coldstart is not None else ()
    query = check_query(request, ("n", *columns))  # attributes: for unknown users
    user_id = check_id("user_id", request.path_params["user_id"])
    attributes = newcomer_attributes({k: v for k, v in query.items() if k != "n"}, bundle)
    recs = bundle.recommend(user_id, parse_n(query.get("n"), bundle), attributes)
    return JSON(
        {"user_id": user_id, "source": recs.source, "known": recs.known}
        | {"items": item_list(bundle, recs)}
        | cold_start_info(recs)
    )


@endpoint
async def session_recommendations(request: Request) -> Response:
    check_query(request, ())
    body = await read_json_body(request)
    bundle = slot_of(request).require()  # taken after the body arrived: one bundle per answer
    items, n = parse_session(body, bundle)
    attributes = newcomer_attributes(body.get("attributes", {}), bundle, "attributes.")
    recs, unknown = bundle.recommend_session(items, n, attributes)
    return JSON(
        {"source": recs.source, "items": item_list(bundle, recs), "unknown_items": unknown}
        | cold_start_info(recs)
    )


@endpoint
async def similar(request: Request) -> Response:
    query = check_query(request, ("n",))
    bundle = slot_of(request).require()
    item_id = check_id("item_id", request.path_params["item_id"])
    recs = bundle.similar_items(item_id, parse_n(query.get("n"), bundle))  # unknown: 404
    (meta,) = bundle.item_metadata([item_id])
    return JSON({"item_id": item_id, "item": meta, "items": item_list(bundle, recs)})


@endpoint
async def metadata(request: Request) -> Response:
    check_query(request, ())
    slot = slot_of(request)
    slot.require()
    loaded = slot.current
    assert loaded is not None
    meta = loaded.bundle.metadata
    return JSON(
        {
            "model": {"family": meta.get("model_type"), "params": meta.get("params", {})},
            "metrics": meta.get("metrics", {}),
            "training_data": {"md5": meta.get("inputs_md5", {}).get(str(TRAIN))},
            "bundle": loaded.info(),
            "limits": {
                "max_n": loaded.bundle.max_n,
                "max_session_items": MAX_SESSION_ITEMS,
                "max_body_bytes": MAX_BODY_BYTES,
            },
        }
    )


@endpoint
async def reload(request: Request) -> Response:
    token = request.app.state.admin_token
    if not token:
        raise ServiceError(404, f"admin endpoint disabled; set {ADMIN_TOKEN_ENV} to enable it")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ServiceError(
            401, "expected the header Authorization: Bearer <admin token>", "authorization"
        )
    slot = slot_of(request)
    previous = slot.current
    try:
        loaded = await slot.load_async("admin reload")
    except StageError as exc:
        serving = previous.info() if previous else None
        return JSON({"error": f"new bundle refused: {exc}", "serving": serving}, status_code=409)
    return JSON(
        {
            "reloaded": True,
            "bundle": loaded.info(),
            "previous": previous.info() if previous else None,
        }
    )


async def routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) as our JSON error."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {
        404: f"no such endpoint: {request.method} {request.url.path[:80]}",
        405: f"method {request.method} not allowed here",
    }.get(status, "request refused")
    return error_response(status, message)


@contextlib.asynccontextmanager
async def load_in_background(app: Starlette) -> AsyncIterator[None]:
    """The lifespan with `load_on_startup`: load the bundle in the background (so /health
    says 503 until it is in) and reload it on SIGHUP."""
    slot: BundleSlot = app.state.slot
    tasks: set[asyncio.Task[Any]] = set()

    def start_load(reason: str) -> None:
        # A refused bundle was logged by `load`; keep the task until it is done.
        task = asyncio.ensure_future(slot.load_async(reason))
        tasks.add(task)
        task.add_done_callback(finished)

    def finished(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it again

    loop = asyncio.get_running_loop()
    limit_threads()
    start_load("startup")
    hup = True
    try:
        loop.add_signal_handler(signal.SIGHUP, start_load, "SIGHUP")
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        hup = False
        log.warning("SIGHUP reload unavailable here; use POST /admin/reload")
    try:
        yield
    finally:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/recommendations/{user_id}", user_recommendations, methods=["GET"]),
    Route("/recommendations", session_recommendations, methods=["POST"]),
    Route("/items/{item_id}/similar", similar, methods=["GET"]),
    Route("/metadata", metadata, methods=["GET"]),
    Route("/admin/reload", reload, methods=["POST"]),
]


def create_app(
    slot: BundleSlot,
    admin_token: str | None = None,
    load_on_startup: bool = True,
    allowed_hosts: Sequence[str] = ("*",),
) -> Starlette:
    """The ASGI app over `slot`. With `load_on_startup` the lifespan loads the bundle in the
    background and SIGHUP reloads it (`load_in_background`); without it (Lambda) the caller
    loads. A request whose Host is not in `allowed_hosts` is refused; no path is redirected
    (a trailing slash is a 404), so no answer points a client at a host it named."""
    app = Starlette(
        routes=ROUTES,
        lifespan=load_in_background if load_on_startup else None,
        exception_handlers={HTTPException: routing_error},
    )
    app.state.slot = slot
    app.state.admin_token = admin_token
    app.router.redirect_slashes = False  # its 307 would echo the client's Host header
    if "*" not in allowed_hosts:  # no layer at all when any host is served
        app.add_middleware(HostCheck, allowed=list(allowed_hosts))
    return app


# --------------------------------------------------------------------------- command line


def port_number(text: str, source: str) -> int:
    """A TCP port from `text`, or StageError naming `source` (--port or $PORT)."""
    if not (text.strip().isascii() and text.strip().isdigit()) or not 0 < int(text) < 65536:
        raise StageError(f"{source} = {text[:40]!r}; expected a port number 1 to 65535")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    from recsys.http_limits import Limits, guarded_protocol  # uvicorn's parser: the server only

    parser = CommandParser(
        description="Serve recommendations from an exported bundle over HTTP (JSON). "
        "SIGHUP or POST /admin/reload swaps in the bundle found at --bundle again.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", help="port ($PORT or 8000); --port wins over $PORT")
    parser.add_argument(
        "--bundle",
        default=os.environ.get(BUNDLE_ENV) or str(BUNDLE),
        help=f"bundle directory (${BUNDLE_ENV} or {BUNDLE})",
    )
    parser.add_argument(
        "--snapshot-dir",
        default=os.environ.get(SNAPSHOT_ENV) or None,
        help=f"where each loaded bundle's private copy is made (${SNAPSHOT_ENV} or the system "
        "temp dir); the copy is unlinked once mapped",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=os.environ.get(HOSTS_ENV) or "*",
        help=f"comma-separated Host names served, *.example.com for subdomains (${HOSTS_ENV} or "
        "*: any); others get 400",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=Limits.request_timeout,
        help=f"seconds a request may take to arrive, head and body ({Limits.request_timeout:g})",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=Limits.max_header_bytes,
        help=f"largest request head, request line plus headers ({Limits.max_header_bytes})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=Limits.max_connections,
        help=f"open connections; more are answered 503 and closed ({Limits.max_connections})",
    )
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        help="seconds an idle keep-alive connection stays open (5)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    try:
        if args.port is not None:
            port = port_number(args.port, "--port")
        else:
            port = port_number(os.environ.get("PORT") or "8000", "$PORT")
        limits = Limits(args.request_timeout, args.max_header_bytes, args.max_connections)
        check_limits(limits, args.keep_alive)
        if args.snapshot_dir is not None and not os.path.isdir(args.snapshot_dir):
            raise StageError(f"--snapshot-dir {args.snapshot_dir}: not a directory")
    except StageError as exc:
        parser.error(str(exc))
    hosts = [h for h in args.allowed_hosts.split(",") if h.strip()] or ["*"]

    import uvicorn

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise_open_files_limit(limits.max_connections)
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None
    slot = BundleSlot(args.bundle, snapshot_dir=args.snapshot_dir)
    app = create_app(slot, admin_token=token, allowed_hosts=hosts)
    log.info(
        "pid %d, bundle %s; reload with kill -HUP %d%s",
        os.getpid(),
        args.bundle,
        os.getpid(),
        " or POST /admin/reload" if token else f" (admin endpoint off: {ADMIN_TOKEN_ENV} unset)",
    )
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(limits),
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=args.keep_alive,
        timeout_graceful_shutdown=10,
    )


def check_limits(limits: Limits, keep_alive: float) -> None:
    """Refuse limits that would disable themselves or the server."""
    if not 0 < limits.request_timeout <= 3600:
        raise StageError(f"--request-timeout {limits.request_timeout:g}; expected (0, 3600] s")
    if not 1024 <= limits.max_header_bytes <= 1 << 20:
        raise StageError(f"--max-header-bytes {limits.max_header_bytes}; expected 1024 to 1048576")
    if not 1 <= limits.max_connections <= 1_000_000:
        raise StageError(f"--max-connections {limits.max_connections}; expected 1 to 1000000")
    if not 0 < keep_alive <= 3600:
        raise StageError(f"--keep-alive {keep_alive:g}; expected (0, 3600] s")


def raise_open_files_limit(connections: int) -> None:
    """Lift the soft open-files limit towards the hard one so `connections` fit, and warn
    when they cannot: past it, accept() fails and clients see resets with nothing logged."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # bundle files, logs, the loop's own descriptors
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-files limit %d is below --max-connections %d + 256; lower --max-connections "
            "or raise ulimit -n",
            soft,
            connections,
        )


if __name__ == "__main__":
    main()
