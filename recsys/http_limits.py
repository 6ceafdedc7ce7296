"""Connection-level limits for the HTTP service, enforced in uvicorn's httptools protocol.

uvicorn bounds idle keep-alive connections only: a client that sends half a request head,
or a body that never ends, holds its connection (and an open file) for ever, and a head of
any size is buffered. `guarded_protocol` returns a subclass of uvicorn's httptools protocol
that adds, per connection:

- a deadline for each request from its first byte (or from the connection's opening) to
  its last body byte: past it the client gets a 408 and the connection is closed;
- a cap on the bytes of a request head (request line plus headers): 431 past it;
- a cap on open connections for the whole server: one over it gets a 503 and is closed at
  once, before it can hold a file descriptor;
- the same JSON error shape as the app (`{"error": ...}`) for malformed HTTP, instead of
  uvicorn's plain-text 400.

Everything else (parsing, keep-alive, pipelining, flow control) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("recsys.service")

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class Limits:
    """Server limits (see `recsys serve --help`); the defaults are the safe ones."""

    request_timeout: float = 15.0  # seconds from a request's first byte to its last
    max_header_bytes: int = 16 * 1024  # request line plus headers
    max_connections: int = 1000  # open connections, idle ones included


def guarded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` applied (pass as `uvicorn.run(http=...)`)."""

    class GuardedProtocol(HttpToolsProtocol):
        _limits = limits
        _last_refusal_log = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._deadline: asyncio.TimerHandle | None = None
            self._head_bytes = 0
            self._in_head = True
            over = len(self.connections) >= self._limits.max_connections
            super().connection_made(transport)
            if over:
                cls = type(self)
                now = time.monotonic()
                if now - cls._last_refusal_log > 10:  # one line per 10 s, not per connection
                    cls._last_refusal_log = now
                    log.warning(
                        "refusing connections: %d open, the limit is %d (--max-connections)",
                        len(self.connections) - 1,
                        self._limits.max_connections,
                    )
                self._refuse(503, "too many open connections; retry later")
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            limit = self._limits.max_header_bytes
            if self._in_head and self._head_bytes > limit and not self.transport.is_closing():
                self._refuse(431, f"request head over {limit:,} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._deadline is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            # the next request's head starts counting now; idle time is keep-alive's
            self._in_head = True
            self._head_bytes = 0
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, f"malformed HTTP request: {msg}")

        # -- helpers

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(self._limits.request_timeout, self._expired)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()  # type: ignore[union-attr]
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.response_started:
                self.transport.close()  # the app is answering: cut it short, no second status
                return
            self._refuse(408, f"request not received within {self._limits.request_timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            """Answer `status` with our JSON error and close the connection."""
            self._disarm()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # the app (if running) sees a disconnect, and cannot write after us
                cycle.disconnected = True
                cycle.message_event.set()
            body = orjson.dumps({"error": message})
            head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
            head += [name + b": " + value + b"\r\n" for name, value in self._default_headers()]
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(body)
            )
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def _default_headers(self) -> list[tuple[bytes, bytes]]:
            headers: Any = self.server_state.default_headers
            return list(headers)

    return GuardedProtocol
