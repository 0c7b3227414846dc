"""The proxy path: the hottest code in the system, served as raw ASGI.

Proxied requests never enter FastAPI or Starlette: :class:`Gateway` resolves the raw path, and
either proxies it here or hands the request to the FastAPI app that answers the gateway's own
endpoints (identity, health, metrics). What the framework did for proxied requests is done
here, cheaply: request ids, limits, problem+json errors, metrics.

The services are reached through :mod:`gateway.upstream` (pooled HTTP/1.1 connections).
Small bodies are read whole (they can be replayed); larger ones stream both ways.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.types import Message, Receive, Scope, Send

from gateway.ratelimit import RouteLimits
from gateway.routes import Target, resolve
from gateway.upstream import (
    Response,
    UpstreamError,
    UpstreamGone,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from shared.errors import send_problem
from shared.limits import (
    BodyTimeout,
    BodyTooLarge,
    RequestLimits,
    drain,
    limited_receive,
    preflight,
    read_body,
    send_body_timeout,
    send_too_large,
)
from shared.observability import HTTP_LATENCY, HTTP_REQUESTS

__all__ = ["Gateway"]

_log = structlog.get_logger("qunbuy.gateway")
# RFC 9110 §7.6.1 hop-by-hop headers, the ones the upstream client sets itself, and Expect
# (the gateway's server answered it; the body is already on its way).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
        b"content-length",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"x-request-id",
        b"server",
        b"date",
    }
)
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Bytes that may not appear on a request line (controls, space, DEL).
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# Bodies up to this size are read whole: sent with a Content-Length, and replayable.
_WHOLE = 64 * 1024
# Methods a proxy may send twice (RFC 9110 §9.2.2); a POST may when it has an Idempotency-Key.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_SLOW_SECONDS = 1.0


class _InvalidHeader(Exception):
    pass


class _InvalidTarget(Exception):
    pass


class _ClientGone(Exception):
    """The client went away before its body was whole."""


def _forward_headers(scope: Scope, request_id: str) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to send upstream, and whether the request carries an Idempotency-Key.

    Values go out byte for byte as the client sent them (RFC 9110 allows any octet but
    controls; the server's parser refused CR and LF already, a NUL is refused here). Headers
    named in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1).
    """
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    named: set[bytes] = set()
    for name, value in raw:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    headers: list[tuple[bytes, bytes]] = []
    keyed = False
    forwarded_for = b""
    host = b""
    for name, value in raw:
        if b"\0" in value or b"\r" in value or b"\n" in value:
            raise _InvalidHeader
        if name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"host":
            host = value
        if name in _HOP_BY_HOP or name in named:
            continue
        keyed = keyed or name == b"idempotency-key"
        headers.append((name, value))
    client = scope.get("client")
    peer = client[0].encode("ascii") if client else b""
    headers.append((b"x-request-id", request_id.encode("ascii")))
    headers.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("ascii")))
    headers.append((b"x-forwarded-host", host))
    return headers, keyed


class _Metrics:
    """Prometheus children cached per label set: no label lookup on the hot path."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels("gateway", method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        histogram = self._latency.get((method, route))
        if histogram is None:
            histogram = HTTP_LATENCY.labels("gateway", method, route)
            self._latency[(method, route)] = histogram
        histogram.observe(seconds)


class Gateway:
    """The gateway's ASGI application: proxied resources here, everything else to ``api``."""

    def __init__(
        self,
        api: Any,
        *,
        pool: UpstreamPool,
        limits: RequestLimits,
        rate_limits: RouteLimits | None = None,
    ) -> None:
        self.api = api
        self.pool = pool
        self.limits = limits
        self.rate_limits = rate_limits
        self._metrics = _Metrics()

    # The FastAPI app's router and state, so that tools that run an app's lifespan work here.
    @property
    def router(self) -> Any:
        return self.api.router

    @property
    def state(self) -> Any:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        public = raw_path.startswith(b"/v1/")
        # The one check a proxied request gets beyond proxying (docs/identity.md).
        limits = self.rate_limits
        if public and limits is not None and not await limits.admit(scope, send, raw_path):
            return
        target = resolve(raw_path.decode("latin-1")) if public else None
        if target is None:
            await self.api(scope, receive, send)
            return
        await self._proxy(scope, receive, send, target)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, target: Target) -> None:
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        own = [(b"x-request-id", request_id.encode()), (b"x-served-by", b"gateway")]
        status = 500

        async def send_own(message: Message) -> None:
            # The gateway's own answers (problems); a relayed answer adds ``own`` itself.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *own]
            await send(message)

        try:
            upstream = await self._forward(scope, receive, send_own, target, request_id)
            if upstream is not None:
                status = upstream.status
                await _relay_response(scope, send, send_own, target.service, upstream, own)
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.observe(scope["method"], target.route, status, elapsed)
            if status >= 500 or elapsed > _SLOW_SECONDS:
                _log.warning(
                    "proxied",
                    request_id=request_id,
                    method=scope["method"],
                    route=target.route,
                    service=target.service,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, target: Target, request_id: str
    ) -> Response | None:
        """The service's response, or None when the gateway has answered itself."""
        if not await preflight(scope, receive, send, self.limits):
            return None
        try:
            headers, keyed = _forward_headers(scope, request_id)
        except _InvalidHeader:
            await send_problem(
                scope,
                send,
                status=400,
                code="invalid_header",
                title="A request header holds a control character",
            )
            return None
        method: str = scope["method"]
        length = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        body_receive = limited_receive(receive, self.limits)
        data: bytes | AsyncIterator[bytes] | None = None
        try:
            if length is not None and length <= _WHOLE:
                data = await read_body(body_receive)
                if data is None:
                    return None  # the client went away
            elif length is not None or chunked:
                data = _stream(body_receive)
            replayable = not isinstance(data, AsyncIterator) and (method in _IDEMPOTENT or keyed)
            return await self._send_upstream(
                target, method, scope, headers, data, length, replayable
            )
        except BodyTooLarge:
            await drain(receive)
            await send_too_large(scope, send, self.limits)
        except BodyTimeout:
            await send_body_timeout(scope, send)
        except _InvalidTarget:
            await send_problem(
                scope,
                send,
                status=400,
                code="invalid_path",
                title="The path or query holds a space or a control character",
            )
        except _ClientGone:
            pass  # nobody to answer
        except UpstreamError as exc:
            await _upstream_error(scope, send, target.service, exc)
        return None

    async def _send_upstream(
        self,
        target: Target,
        method: str,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        data: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        replayable: bool,
    ) -> Response:
        upstream = self.pool.services[target.service]
        query: bytes = scope.get("query_string", b"")
        # The path goes out byte for byte as the client sent it (no re-encoding, no
        # dot-segment folding).
        path = target.path.encode("latin-1")
        request_target = path + b"?" + query if query else path
        if _UNSAFE_TARGET.search(request_target):
            # uvicorn's parser lets none through; this keeps it so whatever serves the gateway.
            raise _InvalidTarget
        try:
            return await upstream.request(method, request_target, headers, data, length)
        except UpstreamUnreachable:
            pass  # nothing was sent (nor a streamed body read): try once more, maybe elsewhere
        except UpstreamGone:
            # The service closed the connection before answering: a pooled connection it had
            # just closed, or a process that went away. A request that may be sent twice goes
            # out once more; others are answered 502, since the service may have acted on them.
            if not replayable:
                raise
        # On a new connection: whatever failed the first attempt (a restart, a crash) has
        # likely closed the idle ones too.
        return await upstream.request(method, request_target, headers, data, length, fresh=True)


# New request ids: a random per-process prefix and a counter (32 hex digits, like a UUID's):
# unique across processes without a system call for randomness on every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(secrets.randbelow(2**32))


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _VALID_ID.match(value):
                return str(value.decode("ascii"))
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


async def _stream(receive: Receive) -> AsyncIterator[bytes]:
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        more = message.get("more_body", False)


def _response_headers(upstream: Response) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as it sent them (its raw bytes, names lower-cased), without
    hop-by-hop ones and those named in its ``Connection``."""
    headers: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    for name, value in upstream.raw_headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection":
                named = named or set()
                named.update(t.strip().lower() for t in value.split(b","))
            continue
        headers.append((lower, value))
    if named:
        headers = [(k, v) for k, v in headers if k not in named]
    return headers


async def _relay_response(
    scope: Scope,
    send: Send,
    send_own: Send,
    service: str,
    upstream: Response,
    own: list[tuple[bytes, bytes]],
) -> None:
    """Sends the service's answer (with the gateway's ``own`` headers) to ``send``; a failure
    before anything went out is answered through ``send_own``."""
    headers = _response_headers(upstream)
    headers += own
    if scope["method"] == "HEAD":
        # No body follows; the length is the one a GET would have had.
        upstream.release()
        if upstream.content_length is not None:
            headers.append((b"content-length", str(upstream.content_length).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if upstream.content_length is not None and upstream.content_length <= _WHOLE:
        # Small bodies (nearly every API answer): read once, send with Content-Length.
        try:
            raw = await upstream.read()
        except UpstreamError as exc:
            await _upstream_error(scope, send_own, service, exc)
            return
        finally:
            upstream.release()
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
        return
    if upstream.content_length is not None:
        # Kept, so that a body cut short by the service is visibly short to the client.
        headers.append((b"content-length", str(upstream.content_length).encode()))
    try:
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        # An upstream error mid-body propagates: the server then aborts the connection instead
        # of ending the response cleanly, so the client cannot take a truncated body for whole.
        async for chunk in upstream.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        upstream.release()


async def _upstream_error(scope: Scope, send: Send, service: str, exc: UpstreamError) -> None:
    if isinstance(exc, UpstreamTimeout):
        await send_problem(
            scope,
            send,
            status=504,
            code="upstream_timeout",
            title="The service took too long to answer",
            detail=f"{service} did not answer in time",
        )
        return
    await send_problem(
        scope,
        send,
        status=502,
        code="upstream_unavailable",
        title="The service is unavailable",
        detail=f"{service} could not be reached",
    )
