"""Small helpers for tests that need real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

# The tests' servers listen on ports below the kernel's ephemeral range (32768-60999 on Linux),
# which no outgoing connection takes as its source port, from a block of their own for each
# xdist worker, handed out in turn. A port from the kernel (bind to port 0, then close) could be
# handed out twice: to two processes started together, or to two workers; the second process
# failed to bind while the first answered its health check in its place (CI saw orders' routes
# answered by crowdfund).
_FIRST_PORT = 20000
_PORTS_PER_WORKER = 1200  # ten blocks: 20000-31999
_ports: Iterator[int] | None = None


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"...; unset without xdist
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = _FIRST_PORT + (index % 10) * _PORTS_PER_WORKER
    return range(start, start + _PORTS_PER_WORKER)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, never handed out twice in a row of 1,200
    by this process nor ever by another test worker."""
    global _ports
    if _ports is None:
        _ports = itertools.cycle(_port_block())
    for _ in range(_PORTS_PER_WORKER):
        port = next(_ports)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is passed
            except OSError:
                continue
        return port
    raise RuntimeError("every port of this worker's block is in use")


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
