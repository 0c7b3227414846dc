"""What the proxy refuses to put on the wire, checked on its ASGI app directly: uvicorn's
parser already refuses these bytes (so no real client can bring them through it), and the
proxy keeps them off the service's connection whatever server runs it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.proxy import Gateway
from gateway.upstream import UpstreamPool
from shared.limits import RequestLimits
from tests.gateway.asgi import call, unused_api
from tests.helpers import free_port


async def _call(scope_changes: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    # A pool that is never started: nothing may reach it (it would answer 502).
    pool = UpstreamPool(
        {"orders": f"http://127.0.0.1:{free_port()}"},
        connect_timeout=1,
        read_timeout=1,
        pool_size=1,
    )
    gateway = Gateway(unused_api, pool=pool, limits=RequestLimits())
    status, body = await call(gateway, **scope_changes)
    return status, json.loads(body)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"gw"), (b"x-note", b"a\x00b")],
        [(b"host", b"gw\x00evil")],  # copied into X-Forwarded-Host
        [(b"host", b"gw"), (b"x-forwarded-for", b"1.2.3.4\r\nx-admin: 1")],
    ],
    ids=["nul", "nul-in-host", "crlf-in-forwarded-for"],
)
async def test_a_control_character_in_a_header_is_400_and_never_forwarded(
    headers: list[tuple[bytes, bytes]],
) -> None:
    status, body = await _call({"headers": headers})
    assert (status, body["code"]) == (400, "invalid_header")


@pytest.mark.parametrize(
    "changes",
    [
        {"raw_path": b"/v1/orders/o1 HTTP/1.1\r\nx-admin: 1\r\n\r\nGET /internal"},
        {"raw_path": b"/v1/orders/o\x001"},
        {"query_string": b"a=1 HTTP/1.1\r\nhost: evil"},
    ],
    ids=["request-line-in-path", "nul-in-path", "request-line-in-query"],
)
async def test_a_space_or_control_character_in_the_target_is_400(changes: dict[str, Any]) -> None:
    status, body = await _call(changes)
    assert (status, body["code"]) == (400, "invalid_path")
