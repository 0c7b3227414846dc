"""Every endpoint, every role, two merchants: generated from the services' routes.

A route that authenticates must state the roles it needs (``require_merchant_role`` for
anything staff may call, ``require_roles`` for what only other roles may); an endpoint added
without one fails ``test_every_authenticated_endpoint_states_its_roles``, and every stated
endpoint is called here by each kind of caller, so a new endpoint cannot be missed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from shared.auth import (
    MerchantRole,
    Role,
    RolesRequired,
    TokenIssuer,
    current_user,
    merchant_requirement,
    requirements_of,
)
from tests.conftest import TEST_SIMULATED_WEBHOOK_SECRET, running, settings_for
from tests.crowdfund.project_support import project_body
from tests.orders.presale_support import campaign_body


@dataclass(frozen=True)
class Caller:
    name: str
    roles: tuple[Role, ...]
    merchant_role: MerchantRole | None = None
    merchant_id: str | None = None


MERCHANT, OTHER_MERCHANT = "m_matrix_a", "m_matrix_b"
CALLERS = [
    *(Caller(r, ("staff",), r, MERCHANT) for r in ("owner", "operator", "finance", "viewer")),
    Caller("staff-without-role", ("staff",), None, MERCHANT),
    Caller("admin", ("admin",)),
    Caller("customer", ("customer",)),
    Caller("distributor", ("customer", "distributor")),
]
REFUSALS = {"merchant_role_required", "role_required"}


def _apps(env: Callable[..., dict[str, str]]) -> dict[str, FastAPI]:
    from services.crowdfund.app import create_app as crowdfund
    from services.orders.app import create_app as orders
    from services.referrals.app import create_app as referrals

    paying = {
        "PAYMENT_PROVIDER": "simulated",
        "SIMULATED_WEBHOOK_SECRET": TEST_SIMULATED_WEBHOOK_SECRET,
    }
    return {
        "orders": orders(settings_for("orders", env("orders", **paying))),
        "crowdfund": crowdfund(settings_for("crowdfund", env("crowdfund", **paying))),
        "referrals": referrals(settings_for("referrals", env("referrals"))),
    }


def _authenticates(dependant: Dependant) -> bool:
    return any(d.call is current_user or _authenticates(d) for d in dependant.dependencies)


def _routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute]]:
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path and context.path.startswith("/v1/"):
            for method in sorted(context.methods or ()):
                yield method, context.path, route


def allowed(route: APIRoute, caller: Caller) -> bool:
    if "admin" in caller.roles:
        return True
    stated = merchant_requirement(route.dependant)
    if stated is not None:
        if "staff" in caller.roles:
            return bool(stated.roles) and caller.merchant_role in (None, *stated.roles)
        return bool(set(caller.roles) & set(stated.others))
    needed = {
        r for x in requirements_of(route.dependant) if isinstance(x, RolesRequired) for r in x.roles
    }
    return bool(set(caller.roles) & needed)


@pytest.fixture(scope="module")
def apps(service_env: Callable[..., dict[str, str]]) -> dict[str, FastAPI]:
    return _apps(service_env)


def test_every_authenticated_endpoint_states_its_roles(apps: dict[str, FastAPI]) -> None:
    silent = [
        f"{service}: {method} {path}"
        for service, app in apps.items()
        for method, path, route in _routes(app)
        if _authenticates(route.dependant) and not requirements_of(route.dependant)
    ]
    assert silent == [], "state the roles these need (shared.auth.require_merchant_role)"


def test_the_openapi_documents_say_which_merchant_roles_each_endpoint_needs(
    apps: dict[str, FastAPI],
) -> None:
    for app in apps.values():
        document = app.openapi()
        for method, path, route in _routes(app):
            stated = merchant_requirement(route.dependant)
            operation = document["paths"][path][method.lower()]
            if stated is None:
                assert "x-merchant-roles" not in operation, (method, path)
            else:
                assert operation["x-merchant-roles"] == list(stated.roles), (method, path)


@pytest.fixture(scope="module")
async def clients(apps: dict[str, FastAPI]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with (
        running(apps["orders"]) as orders,
        running(apps["crowdfund"]) as crowdfund,
        running(apps["referrals"]) as referrals,
    ):
        yield {"orders": orders, "crowdfund": crowdfund, "referrals": referrals}


def token(issuer: TokenIssuer, caller: Caller, merchant: str | None = None) -> dict[str, str]:
    jwt = issuer.issue(
        f"matrix_{caller.name}",
        list(caller.roles),
        merchant_id=merchant or caller.merchant_id,
        merchant_role=caller.merchant_role,
    )
    return {"Authorization": f"Bearer {jwt}", "Idempotency-Key": uuid.uuid4().hex}


def _cases(service_env_free: dict[str, FastAPI]) -> list[Any]:
    return [
        pytest.param(service, method, path, id=f"{service}:{method}:{path}")
        for service, app in service_env_free.items()
        for method, path, route in _routes(app)
        if requirements_of(route.dependant)
    ]


def _fill(path: str, values: dict[str, str] | None = None) -> str:
    return "/".join(
        (values or {}).get(s[1:-1], str(uuid.uuid4())) if s.startswith("{") else s
        for s in path.split("/")
    )


def _route(apps: dict[str, FastAPI], service: str, method: str, path: str) -> APIRoute:
    return next(r for m, p, r in _routes(apps[service]) if (m, p) == (method, path))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "endpoint" in metafunc.fixturenames:
        env = {
            "QUNBUY_MODE": "production",
            "DATABASE_URL": "postgresql://matrix@127.0.0.1:1/none",  # never connected to
            "EVENT_SECRET": "matrix",
            "LOG_LEVEL": "WARNING",
        }
        apps = _apps(lambda service, **extra: {**env, **extra})
        metafunc.parametrize(
            "endpoint", [p.values for p in _cases(apps)], ids=[p.id for p in _cases(apps)]
        )


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.name)
async def test_each_role_is_let_in_or_refused_as_the_endpoint_states(
    apps: dict[str, FastAPI],
    clients: dict[str, httpx.AsyncClient],
    issuer: TokenIssuer,
    endpoint: tuple[str, str, str],
    caller: Caller,
) -> None:
    service, method, path = endpoint
    route = _route(apps, service, method, path)
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    response = await clients[service].request(
        method, _fill(path), json=body, headers=token(issuer, caller)
    )
    refused = response.status_code == 403 and response.json().get("code") in REFUSALS
    assert response.status_code < 500, response.text
    assert refused is not allowed(route, caller), (response.status_code, response.text)


async def _created(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, body: dict[str, Any]
) -> str:
    created = await client.post(path, json=body, headers=headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture(scope="module")
async def owned(clients: dict[str, httpx.AsyncClient], issuer: TokenIssuer) -> dict[str, str]:
    """One row of each kind a staff read is about, made by the first merchant's owner."""
    owner = token(issuer, CALLERS[0])
    rules = {
        "enrollment": "open",
        "attribution": "first_touch",
        "level1_bps": 1000,
        "level2_bps": 500,
        "leader_bps": 0,
        "max_total_bps": 3000,
    }
    made = await clients["referrals"].put("/v1/commission-rules", json=rules, headers=owner)
    assert made.status_code == 200, made.text
    employee = {"user_id": "matrix-employee", "real_name": "Wang", "phone": "13700000000"}
    return {
        "campaign_id": await _created(clients["orders"], owner, "/v1/presales", campaign_body()),
        "project_id": await _created(clients["crowdfund"], owner, "/v1/projects", project_body()),
        "distributor_id": await _created(
            clients["referrals"], owner, "/v1/distributors/direct", employee
        ),
    }


NOT_YET = {"settlement_not_found"}
# The staff reads of one row, by the row's path parameter: the merchant axis of the matrix.
MERCHANT_AXIS = [
    ("orders", "campaign_id"),
    ("crowdfund", "project_id"),
    ("referrals", "distributor_id"),
]


@pytest.mark.parametrize(("service", "param"), MERCHANT_AXIS, ids=[s for s, _ in MERCHANT_AXIS])
@pytest.mark.parametrize("caller", CALLERS[:4], ids=lambda c: c.name)
async def test_staff_of_another_merchant_never_see_a_merchants_row(
    apps: dict[str, FastAPI],
    clients: dict[str, httpx.AsyncClient],
    issuer: TokenIssuer,
    owned: dict[str, str],
    service: str,
    param: str,
    caller: Caller,
) -> None:
    """On every staff read of one campaign, project or distributor: its merchant's staff see
    it, another merchant's staff (whatever their role) get what a missing row gets."""
    reads = [
        path
        for method, path, route in _routes(apps[service])
        if method == "GET"
        and f"{{{param}}}" in path
        and (stated := merchant_requirement(route.dependant)) is not None
        and caller.merchant_role in stated.roles
    ]
    assert reads
    client = clients[service]
    for path in reads:
        url = _fill(path, {param: owned[param]})
        own = await client.get(url, headers=token(issuer, caller))
        # Found; or what is read does not exist yet (a campaign's demand before its close:
        # 409; a project's statement before its settlement: 404 of its own code).
        found = own.status_code in (200, 409) or own.json().get("code") in NOT_YET
        assert found, (path, own.text)
        theirs = await client.get(url, headers=token(issuer, caller, OTHER_MERCHANT))
        missing = await client.get(_fill(path), headers=token(issuer, caller))
        assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
        assert theirs.json()["code"] == missing.json()["code"]
