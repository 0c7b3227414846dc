"""The gateway in front of real service processes, over real HTTP."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Platform, TokenFactory
from tests.helpers import free_port
from tests.processes import Process

pytestmark = pytest.mark.xdist_group("processes")


@pytest.fixture
async def gw(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    ("prefix", "service"),
    [
        ("/v1/presales", "orders"),
        ("/v1/orders", "orders"),
        ("/v1/groups", "orders"),
        ("/v1/pickup-points", "orders"),
        ("/v1/projects", "crowdfund"),
        ("/v1/pledges", "crowdfund"),
        ("/v1/distributors", "referrals"),
        ("/v1/referral-links", "referrals"),
        ("/v1/commissions", "referrals"),
        ("/v1/commission-rules", "referrals"),
        ("/v1/withdrawals", "referrals"),
    ],
)
async def test_routes_by_resource(gw: httpx.AsyncClient, prefix: str, service: str) -> None:
    response = await gw.get(f"{prefix}/{uuid.uuid4().hex}/no/such/thing")
    # No endpoint serves this path: the owning service itself answers 404 problem+json.
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get_list("x-served-by") == [service, "gateway"]


async def test_unknown_resource_is_answered_by_the_gateway(gw: httpx.AsyncClient) -> None:
    response = await gw.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers.get_list("x-served-by") == ["gateway"]
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/internal/events",
        "/v1/webhooks/orders/%2e%2e/%2e%2e/internal/events",
        "/v1/orders/%2e%2e/%2e%2e/internal/events",
    ],
)
async def test_internal_endpoints_are_not_reachable_through_the_gateway(
    gw: httpx.AsyncClient, path: str
) -> None:
    response = await gw.post(path, content=b"{}")
    assert response.status_code in (404, 405)
    assert response.headers.get_list("x-served-by") == ["gateway"]


async def test_request_id_is_passed_through_to_the_service_and_its_logs(
    gw: httpx.AsyncClient, platform: Platform
) -> None:
    rid = f"test-{uuid.uuid4().hex}"
    response = await gw.get("/v1/projects/abc", headers={"X-Request-ID": rid})
    assert response.headers["x-request-id"] == rid
    assert response.json()["request_id"] == rid  # the service's problem body
    log = platform.processes["crowdfund"].log
    for _ in range(50):
        if rid in log.read_text():
            break
        await asyncio.sleep(0.1)
    assert f'"request_id": "{rid}"' in log.read_text()


async def test_request_id_is_created_when_missing(gw: httpx.AsyncClient) -> None:
    response = await gw.get("/v1/projects/abc")
    rid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid


async def test_invalid_request_id_is_replaced(gw: httpx.AsyncClient) -> None:
    response = await gw.get("/v1/projects/abc", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_gateway_is_ready_when_every_service_is(gw: httpx.AsyncClient) -> None:
    response = await gw.get("/readyz")
    assert response.status_code == 200
    assert response.json()["services"] == {
        "orders": "ready",
        "crowdfund": "ready",
        "referrals": "ready",
    }


async def test_caller_token_reaches_the_service(gw: httpx.AsyncClient, auth: TokenFactory) -> None:
    """The gateway forwards Authorization untouched; the service verifies it."""
    forged = {"Authorization": "Bearer not-a-token"}
    response = await gw.get("/v1/payments/" + uuid.uuid4().hex, headers=forged)
    assert response.status_code == 401
    assert response.headers.get_list("x-served-by") == ["orders", "gateway"]
    assert response.json()["code"] == "invalid_token"
    ok = await gw.get("/v1/payments/" + uuid.uuid4().hex, headers=auth("customer"))
    assert ok.status_code == 404
    assert ok.headers.get_list("x-served-by") == ["orders", "gateway"]


async def test_stopped_upstream_is_502_problem_json(
    lone_gateway: Callable[..., Process],
    service_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    crowdfund = Process(
        "crowdfund", free_port(), tmp_path / "crowdfund.log", env=service_env("crowdfund")
    )
    crowdfund.start()
    try:
        crowdfund.wait_healthy()
        gateway = lone_gateway(
            CROWDFUND_URL=crowdfund.url,
            ORDERS_URL=f"http://127.0.0.1:{free_port()}",
            REFERRALS_URL=f"http://127.0.0.1:{free_port()}",
        )
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            before = await client.get("/v1/projects/x")
            assert before.headers.get_list("x-served-by") == ["crowdfund", "gateway"]
            crowdfund.stop()
            after = await client.get("/v1/projects/x", headers={"X-Request-ID": "stopped-1"})
            ready = await client.get("/readyz")
    finally:
        crowdfund.stop()
    assert after.status_code == 502
    assert after.headers["content-type"] == "application/problem+json"
    body = after.json()
    assert body["code"] == "upstream_unavailable"
    assert body["request_id"] == "stopped-1"
    assert "crowdfund" in body["detail"]
    assert ready.status_code == 503
    assert ready.json()["code"] == "services_not_ready"


async def test_slow_upstream_is_504_problem_json(lone_gateway: Callable[..., Process]) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the request, never answers; ends when the gateway hangs up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gateway = await asyncio.to_thread(
            lone_gateway,
            ORDERS_URL=f"http://127.0.0.1:{port}",
            CROWDFUND_URL=f"http://127.0.0.1:{port}",
            REFERRALS_URL=f"http://127.0.0.1:{port}",
            UPSTREAM_READ_TIMEOUT="0.5",
        )
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.get("/v1/orders/slow")
    finally:
        server.close()
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"
