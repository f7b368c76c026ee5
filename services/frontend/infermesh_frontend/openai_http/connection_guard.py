"""Bounds on the HTTP API's connections, before aiohttp sees them: a cap on open connections
(503 beyond it), a deadline for a request's headers, a deadline for its body, a JSON body that is
well-formed text (no lone surrogate, no nesting that blows the parser's stack), and accept errors
logged once per interval. A client that opens thousands of connections and sends half a request
on each must not take the file descriptors that gRPC and /metrics need too."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

logger = logging.getLogger(__name__)

_HEADERS_END = b"\r\n\r\n"
_ACCEPT_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The frontend's HTTP connection options."""

    max_connections: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 15.0
    max_body_bytes: int = 8 << 20


def _error_json(message: str, kind: str) -> bytes:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return json.dumps(body).encode()


class _Refused(asyncio.Protocol):
    """Answers 503 at once and closes: the connection cap is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = _error_json("too many open connections to this frontend; retry shortly", "service_unavailable")
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        transport.write(head.encode() + body)  # type: ignore[attr-defined]
        transport.close()


class _Guarded(asyncio.Protocol):
    """Forwards to aiohttp's protocol; closes the connection when the first request's headers
    have not arrived within the header timeout."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._guard.open += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.header_timeout_s, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        self._guard.expired += 1
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._tail = (self._tail + data)[-(len(data) + 3) :]
            if _HEADERS_END in self._tail:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.open -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """A protocol factory around aiohttp's that enforces the connection cap and header deadline."""

    def __init__(self, inner_factory: Callable[[], asyncio.Protocol], limits: HttpLimits) -> None:
        self._inner_factory = inner_factory
        self.limits = limits
        self.open = 0
        self.expired = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            return _Refused()
        return _Guarded(self._inner_factory(), self)


def body_guard_middleware(limits: HttpLimits):
    """Reads a request body within the body timeout (408 otherwise) and refuses JSON that the
    handlers would choke on (400: lone surrogates, nesting deeper than the parser's stack)."""

    @web.middleware
    async def guard_body(request: web.Request, handler):
        if request.body_exists:
            try:
                raw = await asyncio.wait_for(request.read(), limits.body_timeout_s)
            except asyncio.TimeoutError:
                return web.Response(
                    status=408,
                    body=_error_json("the request body did not arrive in time", "invalid_request_error"),
                    content_type="application/json",
                    headers={"Connection": "close"},
                )
            if request.content_type == "application/json" and raw:
                problem = _json_problem(raw)
                if problem:
                    return web.Response(
                        status=400,
                        body=_error_json(problem, "invalid_request_error"),
                        content_type="application/json",
                    )
        return await handler(request)

    return guard_body


def _json_problem(raw: bytes) -> str:
    try:
        parsed = json.loads(raw)
    except RecursionError:
        return "the request body nests JSON too deeply"
    except (ValueError, UnicodeDecodeError):
        return ""  # the handler reports malformed JSON itself
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "the request body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text"
    except RecursionError:
        return "the request body nests JSON too deeply"
    return ""


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Logs the event loop's accept errors (out of file descriptors, ...) once per interval with a
    count, instead of once per failed accept; other errors go to the previous handler."""
    previous = loop.get_exception_handler()
    state = {"last": 0.0, "suppressed": 0}

    def handle(event_loop: asyncio.AbstractEventLoop, context: dict) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message:
            if previous is not None:
                previous(event_loop, context)
            else:
                event_loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - state["last"] < _ACCEPT_LOG_INTERVAL_S:
            state["suppressed"] += 1
            return
        logger.error(
            "%s: %s (%d more like it in the last %.0fs)",
            message,
            context.get("exception"),
            state["suppressed"],
            _ACCEPT_LOG_INTERVAL_S,
        )
        state["last"] = now
        state["suppressed"] = 0

    loop.set_exception_handler(handle)
