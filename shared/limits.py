"""Request limits, enforced before anything is buffered: header count and size, body size, and
how long a client may take to send its body.

The same primitives serve the gateway's raw proxy path and every service
(:class:`RequestLimitsMiddleware`), so a request the gateway lets through is never refused
downstream for a limit the gateway did not apply, and a service reached directly (inside the
cluster) still protects itself.

Answers: 431 ``headers_too_large``, 413 ``body_too_large`` (as soon as the declared
Content-Length is over the limit, or when a streamed body passes it), 408 ``body_timeout``
(a body that trickles in slower than the limits allow), all problem+json.

What the application cannot see is the HTTP server's: the time a client takes to send its
headers, and the memory the parser spends on them before the application runs. In production
the ingress in front of the gateway bounds both (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import send_problem

__all__ = [
    "BodyTimeout",
    "BodyTooLarge",
    "LimitSettings",
    "RequestLimits",
    "RequestLimitsMiddleware",
    "declared_length",
    "drain",
    "header_problem",
    "limited_receive",
    "read_body",
]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_body_bytes: int = 1024 * 1024
    max_headers: int = 100
    max_header_bytes: int = 32 * 1024
    # The whole body must arrive within body_timeout, and no gap between two of its chunks may
    # be longer than body_idle_timeout.
    body_timeout_seconds: float = 30.0
    body_idle_timeout_seconds: float = 10.0


class LimitSettings(BaseSettings):
    """The limits' settings, the same names and defaults in the gateway and every service."""

    max_body_bytes: int = Field(1024 * 1024, alias="MAX_BODY_BYTES", gt=0)
    max_headers: int = Field(100, alias="MAX_HEADERS", gt=0)
    max_header_bytes: int = Field(32 * 1024, alias="MAX_HEADER_BYTES", gt=0)
    body_timeout_seconds: float = Field(30.0, alias="BODY_TIMEOUT_SECONDS", gt=0)
    body_idle_timeout_seconds: float = Field(10.0, alias="BODY_IDLE_TIMEOUT_SECONDS", gt=0)

    def request_limits(self) -> RequestLimits:
        return RequestLimits(
            max_body_bytes=self.max_body_bytes,
            max_headers=self.max_headers,
            max_header_bytes=self.max_header_bytes,
            body_timeout_seconds=self.body_timeout_seconds,
            body_idle_timeout_seconds=self.body_idle_timeout_seconds,
        )


class BodyTooLarge(HTTPException):
    # An HTTPException, so that wherever the body is read (FastAPI wraps other errors of a
    # body read in a 400) it is answered as what it is.
    def __init__(self) -> None:
        super().__init__(413)


class BodyTimeout(HTTPException):
    def __init__(self) -> None:
        super().__init__(408)


class _BadLength(Exception):
    pass


def header_problem(scope: Scope, limits: RequestLimits) -> bool:
    """True when the request's headers are over the limits (too many, or too many bytes)."""
    headers = scope["headers"]
    if len(headers) > limits.max_headers:
        return True
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if size > limits.max_header_bytes:
            return True
    return False


def declared_length(scope: Scope) -> int | None:
    """The Content-Length, or None when the body is chunked or absent. Raises _BadLength for
    a value that is not a single non-negative integer."""
    values = [v for k, v in scope["headers"] if k == b"content-length"]
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit():
        raise _BadLength
    return int(values[0])


def limited_receive(receive: Receive, limits: RequestLimits) -> Receive:
    """``receive`` that raises BodyTooLarge past the size limit and BodyTimeout when the body
    arrives too slowly; disconnects and other messages pass through."""
    received = 0
    deadline = time.monotonic() + limits.body_timeout_seconds

    async def wrapped() -> Message:
        nonlocal received
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout
        try:
            async with asyncio.timeout(min(remaining, limits.body_idle_timeout_seconds)):
                message = await receive()
        except TimeoutError as exc:
            raise BodyTimeout from exc
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limits.max_body_bytes:
                raise BodyTooLarge
        return message

    return wrapped


# What is read and thrown away of a body that broke the limit before the 413 goes out, so the
# client, still sending, reads the answer instead of a connection reset (a close with unread
# data makes the kernel send RST).
_DRAIN_BYTES = 8 * 1024 * 1024
_DRAIN_SECONDS = 1.0


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def drain(receive: Receive) -> None:
    """Reads and discards what remains of the body, within bounds."""
    drained = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            while drained < _DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


async def send_too_large(scope: Scope, send: Send, limits: RequestLimits) -> None:
    await send_problem(
        scope,
        send,
        status=413,
        code="body_too_large",
        title="The request body is too large",
        detail=f"Bodies are limited to {limits.max_body_bytes} bytes.",
        headers=[(b"connection", b"close")],
    )


async def send_body_timeout(scope: Scope, send: Send) -> None:
    await send_problem(
        scope,
        send,
        status=408,
        code="body_timeout",
        title="The request body arrived too slowly",
        headers=[(b"connection", b"close")],
    )


async def send_headers_too_large(scope: Scope, send: Send, limits: RequestLimits) -> None:
    await send_problem(
        scope,
        send,
        status=431,
        code="headers_too_large",
        title="The request headers are too large",
        detail=f"At most {limits.max_headers} headers and {limits.max_header_bytes} bytes.",
        headers=[(b"connection", b"close")],
    )


async def send_bad_length(scope: Scope, send: Send) -> None:
    await send_problem(
        scope,
        send,
        status=400,
        code="invalid_content_length",
        title="The Content-Length header is not valid",
        headers=[(b"connection", b"close")],
    )


async def preflight(scope: Scope, receive: Receive, send: Send, limits: RequestLimits) -> bool:
    """Checks what can be checked before reading the body; answers and returns False when the
    request is refused."""
    if header_problem(scope, limits):
        await send_headers_too_large(scope, send, limits)
        return False
    try:
        length = declared_length(scope)
    except _BadLength:
        await send_bad_length(scope, send)
        return False
    if length is not None and length > limits.max_body_bytes:
        # Nothing of it is kept; what the client already sent is drained (bounded) so that
        # it reads the 413 rather than a reset.
        await drain(receive)
        await send_too_large(scope, send, limits)
        return False
    return True


class RequestLimitsMiddleware:
    """The limits, for a service app (or any ASGI app)."""

    def __init__(self, app: ASGIApp, *, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not await preflight(scope, receive, send, self.limits):
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive(receive, self.limits), tracked)
        except BodyTooLarge:
            if started:
                raise
            await drain(receive)
            await send_too_large(scope, send, self.limits)
        except BodyTimeout:
            if started:
                raise
            await send_body_timeout(scope, send)
