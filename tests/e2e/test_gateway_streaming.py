"""Bodies stream through the gateway both ways (upstream: a stand-in app on a real port)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.helpers import free_port, serve
from tests.processes import Process

pytestmark = pytest.mark.xdist_group("processes")
MIB = 1024 * 1024


async def digest(request: Request) -> JSONResponse:
    sha = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        sha.update(chunk)
        size += len(chunk)
    return JSONResponse(
        {
            "size": size,
            "sha256": sha.hexdigest(),
            "query": request.url.query,
            "path": request.url.path,
            "authorization": request.headers.get("authorization"),
            "x_request_id": request.headers.get("x-request-id"),
            "x_forwarded_for": request.headers.get("x-forwarded-for"),
        },
        status_code=201,
    )


async def big(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(8):
            yield bytes([65 + i]) * MIB

    return StreamingResponse(chunks(), media_type="application/octet-stream")


upstream = Starlette(
    routes=[
        Route("/v1/orders/digest", digest, methods=["POST", "PUT"]),
        Route("/v1/orders/big", big),
    ]
)


@pytest.fixture
async def through_gateway(
    lone_gateway: Callable[..., Process],
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(upstream, free_port()) as url:
        gateway = await asyncio.to_thread(
            lone_gateway,
            ORDERS_URL=url,
            CROWDFUND_URL=url,
            REFERRALS_URL=url,
            MAX_BODY_BYTES=str(64 * MIB),  # streaming is the point here, not the limit
        )
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            yield client


async def test_large_request_body_streams_to_the_service(
    through_gateway: httpx.AsyncClient,
) -> None:
    payload = bytes(range(256)) * (4 * MIB // 256)

    async def body() -> AsyncIterator[bytes]:  # chunked upload: no Content-Length
        for start in range(0, len(payload), 256 * 1024):
            yield payload[start : start + 256 * 1024]

    response = await through_gateway.post(
        "/v1/orders/digest?a=1&b=two",
        content=body(),
        headers={"Authorization": "Bearer abc.def.ghi", "X-Request-ID": "stream-1"},
    )
    assert response.status_code == 201
    seen = response.json()
    assert seen["size"] == len(payload)
    assert seen["sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen["query"] == "a=1&b=two"
    assert seen["authorization"] == "Bearer abc.def.ghi"
    assert seen["x_request_id"] == "stream-1"
    assert seen["x_forwarded_for"] == "127.0.0.1"


async def test_fixed_length_body_is_forwarded(through_gateway: httpx.AsyncClient) -> None:
    response = await through_gateway.put("/v1/orders/digest", content=b"hello")
    assert response.json()["size"] == 5
    assert response.json()["sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_large_response_streams_back(through_gateway: httpx.AsyncClient) -> None:
    received = 0
    first_bytes: set[int] = set()
    async with through_gateway.stream("GET", "/v1/orders/big") as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            first_bytes.update(chunk[:1])
    assert received == 8 * MIB
    assert first_bytes <= set(range(65, 73))


async def raw_upstream(handler: Callable[[bytes], bytes]) -> tuple[asyncio.Server, str]:
    """A bare HTTP/1.1 upstream that answers each request head with ``handler(head)``
    and then closes: it can misbehave in ways a framework will not."""

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(handler(head))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_paths_are_forwarded_exactly_and_hidden_dot_segments_stop_at_the_gateway(
    lone_gateway: Callable[..., Process],
) -> None:
    seen: list[bytes] = []

    def echo(head: bytes) -> bytes:
        seen.append(head.split(b" ")[1])
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"

    server, url = await raw_upstream(echo)
    try:
        gateway = await asyncio.to_thread(
            lone_gateway,
            ORDERS_URL=url,
            CROWDFUND_URL=url,
            REFERRALS_URL=url,
            MAX_BODY_BYTES=str(64 * MIB),  # streaming is the point here, not the limit
        )
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            ok = await client.get("/v1/orders/a%2Fb/%E5%9B%A2?x=%2F")
            blocked = [
                await client.get(path)
                for path in (
                    "/v1/orders/%252e%252e/%252e%252e/internal/events",
                    "/v1/orders/%252e%252e/%252e%252e/metrics",
                    "/v1/orders/..%2F..%2Finternal%2Fevents",
                )
            ]
    finally:
        server.close()
    assert ok.status_code == 200
    # Besides the client's request, only the gateway's own reads of the services' OpenAPI
    # documents (the merged one, docs/identity.md) reached the upstream.
    assert [path for path in seen if path != b"/openapi.json"] == [
        b"/v1/orders/a%2Fb/%E5%9B%A2?x=%2F"
    ]
    assert [r.status_code for r in blocked] == [404, 404, 404]
    assert all(r.headers.get_list("x-served-by") == ["gateway"] for r in blocked)


async def test_a_body_cut_short_upstream_is_visibly_short(
    lone_gateway: Callable[..., Process],
) -> None:
    def short(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 70_000

    server, url = await raw_upstream(short)
    try:
        gateway = await asyncio.to_thread(
            lone_gateway,
            ORDERS_URL=url,
            CROWDFUND_URL=url,
            REFERRALS_URL=url,
            MAX_BODY_BYTES=str(64 * MIB),  # streaming is the point here, not the limit
        )
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/v1/orders/big")
    finally:
        server.close()


async def test_a_small_answer_cut_short_is_502(lone_gateway: Callable[..., Process]) -> None:
    def short(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10

    server, url = await raw_upstream(short)
    try:
        gateway = await asyncio.to_thread(
            lone_gateway,
            ORDERS_URL=url,
            CROWDFUND_URL=url,
            REFERRALS_URL=url,
            MAX_BODY_BYTES=str(64 * MIB),  # streaming is the point here, not the limit
        )
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            response = await client.get("/v1/orders/small")
    finally:
        server.close()
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
