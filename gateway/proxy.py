"""The proxy path: the hottest code in the system.

aiohttp's client, one pooled session per upstream (httpx's pool collapses under concurrent
load, encode/httpx#3215). Bodies stream both ways; nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from yarl import URL

from gateway.routes import resolve
from shared.errors import problem_response
from shared.observability import REQUEST_ID_HEADER

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the client library sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_RESPONSE_DROP = _HOP_BY_HOP | {"x-request-id", "server", "date"}
# x-served-by is kept: it names the service that answered, which operators need when reading
# an error a customer reports.


class UpstreamPool:
    """One aiohttp session per service; created on startup, closed on shutdown."""

    def __init__(
        self,
        upstreams: dict[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
    ) -> None:
        self.upstreams = upstreams
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._pool_size = pool_size
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        for name, base in self.upstreams.items():
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self.sessions[name] = aiohttp.ClientSession(
                base_url=base,
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            )

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions.values()))
        self.sessions.clear()


def _forward_headers(request: Request, request_id: str) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k not in _HOP_BY_HOP}
    headers[REQUEST_ID_HEADER] = request_id
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{prior}, {client}" if prior else client
    headers["x-forwarded-proto"] = request.url.scheme
    headers["x-forwarded-host"] = request.headers.get("host", "")
    return headers


def _upstream_error(request: Request, service: str, exc: BaseException) -> Response:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return problem_response(
            request,
            status=504,
            code="upstream_timeout",
            title="The service took too long to answer",
            detail=f"{service} did not answer in time",
        )
    return problem_response(
        request,
        status=502,
        code="upstream_unavailable",
        title="The service is unavailable",
        detail=f"{service} could not be reached",
    )


async def proxy(request: Request) -> Response:
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    target = resolve(raw_path.decode("latin-1"))
    if target is None:
        return problem_response(
            request, status=404, code="not_found", title="Not found", detail="No such resource"
        )
    pool: UpstreamPool = request.app.state.upstreams
    session = pool.sessions[target.service]
    request_id: str = request.state.request_id
    headers = _forward_headers(request, request_id)
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    data = request.stream() if has_body else None
    if "content-length" in request.headers:
        headers["content-length"] = request.headers["content-length"]
    query = request.scope.get("query_string", b"").decode("latin-1")
    # encoded=True: the path goes out byte for byte as the client sent it (no re-encoding,
    # no dot-segment folding by the URL library).
    url = URL(target.path + (f"?{query}" if query else ""), encoded=True)
    try:
        upstream = await session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            compress=None,
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        return _upstream_error(request, target.service, exc)

    response_headers = {
        k: v for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP
    }
    if upstream.content_length is not None and upstream.content_length <= 64 * 1024:
        # Small bodies (nearly every API answer): read once, send with Content-Length.
        try:
            raw = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            return _upstream_error(request, target.service, exc)
        finally:
            upstream.release()
        return Response(raw, status_code=upstream.status, headers=response_headers)

    if upstream.content_length is not None:
        # Kept, so that a body cut short by the service is visibly short to the client.
        response_headers["content-length"] = str(upstream.content_length)

    async def body() -> AsyncIterator[bytes]:
        # An upstream error mid-body propagates: the server then aborts the connection
        # instead of ending the response cleanly, so the client cannot take a truncated
        # body for a whole one.
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()

    return StreamingResponse(
        body(),
        status_code=upstream.status,
        headers=response_headers,
        background=BackgroundTask(upstream.release),
    )
