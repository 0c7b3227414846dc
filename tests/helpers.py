"""Small helpers for tests that need real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

# Ports for the tests' servers. A port from the kernel (bind to port 0, then close) could be
# handed out twice, to two processes started together or to two xdist workers: the second
# process failed to bind while the first answered its health check in its place (CI saw
# orders' routes answered by crowdfund). So each worker takes ports in turn from a block of its
# own, in a region outside the kernel's ephemeral range: no outgoing connection takes one as
# its source port (nor connects to itself on one).
_MIN_BLOCK = 200


def _region() -> range:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    below, above = range(10_000, low), range(high + 1, 65_536)
    region = max(below, above, key=len)
    # An ephemeral range over nearly every port leaves no region outside it: the bind check
    # alone then.
    return region if len(region) >= 10 * _MIN_BLOCK else range(10_000, 32_768)


@functools.cache
def _block() -> range:
    """This process's share of the region: xdist sets both variables before tests import
    anything; without xdist the whole region is this process's."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"...
    region = _region()
    if not workers or not worker.startswith("gw"):
        return region
    size = len(region) // workers
    if size < _MIN_BLOCK:
        raise RuntimeError(f"{workers} test workers leave under {_MIN_BLOCK} ports each")
    first = region.start + int(worker[2:]) * size
    return range(first, first + size)


_next = -1  # index into the block of the next port to try; a random start on first use


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports on 127.0.0.1 that nothing listens on. None is
    handed out again by this process before the rest of its block has been, nor ever by
    another worker of the run. (A second test run on the same machine draws from the same
    blocks at a random point: a clash is as unlikely as before, not impossible.)"""
    global _next
    block = _block()
    if _next < 0:
        _next = random.randrange(len(block))
    for _ in range(len(block)):
        if _next + count > len(block):
            _next = 0
        base = block[_next]
        _next += count
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free ports left in this test worker's block")


def free_port() -> int:
    return free_ports(1)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is passed
        except OSError:
            return False
    return True


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
