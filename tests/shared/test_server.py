"""The server protocol every process runs (shared/server.py): a response's head and body,
written in one step of the loop, go out in one write; closing writes what is held first."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from shared.server import CoalescingHttpToolsProtocol
from tests.helpers import free_port

WRITES: list[int] = []


class _CountingProtocol(CoalescingHttpToolsProtocol):
    """Counts the writes that reach the real transport (the socket's)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        real_write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            WRITES.append(len(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        super().connection_made(transport)


async def small(request: Request) -> PlainTextResponse:
    return PlainTextResponse("x" * 100)


async def streamed(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def test_one_write_per_answer_and_streams_still_stream() -> None:
    app = Starlette(routes=[Route("/small", small), Route("/streamed", streamed)])
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=_CountingProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn's Server has no event for it
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            WRITES.clear()
            response = await client.get("/small")
            assert response.status_code == 200
            assert response.text == "x" * 100
            assert len(WRITES) == 1  # uvicorn wrote the head and the body apart: two writes
            assert WRITES[0] > 100  # the head and the body, together
            WRITES.clear()
            async with client.stream("GET", "/streamed") as stream:
                lines = [line async for line in stream.aiter_lines()]
            assert lines == ["chunk 0", "chunk 1", "chunk 2"]
            assert len(WRITES) >= 3  # a chunk a step, not held to the end
        # Connection: close: what is held is written before the socket closes.
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := await asyncio.to_thread(raw.recv, 65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert received.endswith(b"x" * 100)
    finally:
        server.should_exit = True
        await serving
