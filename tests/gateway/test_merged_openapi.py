"""The gateway's one OpenAPI document: every public endpoint of every service as a client
calls it, the gateway's own, and nothing else; components namespaced; refreshed when a
service comes up or changes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.openapi import public_path
from gateway.routes import resolve
from tests.conftest import running, settings_for
from tests.helpers import eventually, free_port, serve

SERVICES = ("orders", "crowdfund", "referrals")


def service_app(name: str, env: Callable[..., dict[str, str]]) -> FastAPI:
    from services.crowdfund.app import create_app as crowdfund
    from services.orders.app import create_app as orders
    from services.referrals.app import create_app as referrals

    factories: dict[str, Callable[[Any], FastAPI]] = {
        "orders": orders,
        "crowdfund": crowdfund,
        "referrals": referrals,
    }
    return factories[name](settings_for(name, env(name)))


def operations(app: FastAPI, service: str | None) -> set[tuple[str, str]]:
    """(method, public path) of every documented route of ``app``."""
    found = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        path = context.path if service is None else public_path(service, context.path or "")
        if path is not None:
            found |= {(m.lower(), path) for m in context.methods or ()}
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, item in document["paths"].items() for m in item if m != "parameters"}


@contextlib.asynccontextmanager
async def platform(
    env: Callable[..., dict[str, str]],
    settings: Callable[..., GatewaySettings],
    *,
    down: str | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, FastAPI], dict[str, int]]]:
    apps = {name: service_app(name, env) for name in SERVICES}
    ports = {name: free_port() for name in SERVICES}
    async with contextlib.AsyncExitStack() as stack:
        for name in SERVICES:
            if name != down:
                await stack.enter_async_context(serve(apps[name], ports[name]))
        gateway = create_app(
            settings(
                **{f"{n.upper()}_URL": f"http://127.0.0.1:{p}" for n, p in ports.items()},
                OPENAPI_REFRESH_SECONDS="0.3",
            )
        )
        gw = await stack.enter_async_context(running(gateway))
        yield gw, apps, ports


async def merged(gw: httpx.AsyncClient, *must_have: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        document: dict[str, Any] = (await gw.get("/openapi.json")).json()
        return document if all(p in document["paths"] for p in must_have) else None

    found: dict[str, Any] = await eventually(check, f"{must_have} in the merged document")
    return found


@pytest.fixture
async def whole(
    service_env: Callable[..., dict[str, str]],
    gateway_settings: Callable[..., GatewaySettings],
) -> AsyncIterator[tuple[dict[str, Any], dict[str, FastAPI], FastAPI]]:
    async with platform(service_env, gateway_settings) as (gw, apps, _):
        document = await merged(gw, "/v1/presales", "/v1/withdrawals", "/v1/merchants")
        own = create_app(gateway_settings()).api
        yield document, apps, own


async def test_every_proxied_route_is_in_the_document_and_nothing_else(
    whole: tuple[dict[str, Any], dict[str, FastAPI], FastAPI],
) -> None:
    document, apps, gateway = whole
    expected = operations(gateway, None)
    for name, app in apps.items():
        expected |= operations(app, name)
    assert documented(document) == expected
    for method, path in documented(document) - operations(gateway, None):
        target = resolve(re.sub(r"\{[^}]+\}", "x", path))
        assert target is not None, (method, path)
    assert not [p for p in document["paths"] if p.startswith(("/internal", "/webhooks"))]


async def test_components_are_namespaced_and_every_reference_resolves(
    whole: tuple[dict[str, Any], dict[str, FastAPI], FastAPI],
) -> None:
    document, _, _ = whole
    schemas = document["components"]["schemas"]
    assert "orders.CampaignOut" in schemas
    assert "Problem" in schemas
    assert not [n for n in schemas if n.endswith(".Problem")]  # identical: kept once
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(document).replace("'", '"')))
    assert refs <= set(schemas), refs - set(schemas)
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ids = [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids))
    refunds = document["paths"]["/v1/orders/{order_id}/refunds"]["post"]
    assert refunds["x-merchant-roles"] == ["owner", "finance"]
    assert "application/problem+json" in refunds["responses"]["403"]["content"]


async def test_a_service_that_comes_up_later_is_added(
    service_env: Callable[..., dict[str, str]],
    gateway_settings: Callable[..., GatewaySettings],
) -> None:
    async with platform(service_env, gateway_settings, down="referrals") as (gw, apps, ports):
        first = await merged(gw, "/v1/presales")
        assert "/v1/withdrawals" not in first["paths"]
        async with serve(apps["referrals"], ports["referrals"]):
            later = await merged(gw, "/v1/withdrawals")
    assert "/v1/presales" in later["paths"]
