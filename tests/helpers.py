"""Small helpers for tests that need real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, port: int | None = None, *, lifespan: Literal["on", "off"] = "on"
) -> AsyncIterator[str]:
    """Runs ``app`` under uvicorn on 127.0.0.1 (real HTTP) for the block's duration.

    ``lifespan="off"`` for an app whose lifespan the caller already runs.
    """
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 30) -> Any:
    """Polls ``check`` until it returns something true (and returns that), or fails saying
    ``what`` did not happen within ``seconds``: for what real processes do in the background."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.2)
