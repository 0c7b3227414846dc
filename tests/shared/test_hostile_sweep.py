"""Every operation of the orders, crowdfund and referrals services, called with hostile
input: a NUL byte and control characters in every string, numbers far beyond any column, wrong
types, deep and huge bodies, unknown ids, each by a customer, a staff member of some merchant
and nobody.
None may answer 5xx. The operations are read from each app's own OpenAPI, so a new endpoint
is attacked the day it is added."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import TokenFactory, running, settings_for

ServiceEnv = Callable[..., dict[str, str]]
_HOSTILE_STRINGS = [
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
    "x" * 5000,
]
_HOSTILE_NUMBERS = [10**30, -(10**30), 1.5, -1]


def _schema(spec: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref:
        found: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return found
    return ref_or_schema


def _valid_ish(spec: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> Any:
    """A value of the schema's shape (not necessarily valid), to be spoiled field by field."""
    schema = _schema(spec, schema)
    if depth > 4:
        return None
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if _schema(spec, s).get("type") != "null"]
            return _valid_ish(spec, options[0], depth + 1) if options else None
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            name: _valid_ish(spec, sub, depth + 1)
            for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [_valid_ish(spec, schema.get("items", {}), depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    if schema.get("format") == "date":
        return "2030-01-01"
    return "text"


def _spoiled(body: Any) -> list[Any]:
    """Copies of ``body`` with one leaf made hostile each, and a few whole-body attacks."""
    out: list[Any] = [None, [], "x", 10**30, {"a": {"b": {"c": {"d": [[[[[]]]]]}}}}]
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(value, str):
                out += [{**body, name: bad} for bad in _HOSTILE_STRINGS]
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out += [{**body, name: bad} for bad in _HOSTILE_NUMBERS]
            out += [{**body, name: None}, {**body, name: {"nested": "\x00"}}]
            if isinstance(value, dict | list):
                out += [{**body, name: spoiled} for spoiled in _spoiled(value)[5:12]]
        out.append({**body, "unexpected\x00": 1})
    return out


async def _call(
    client: httpx.AsyncClient,
    method: str,
    target: str,
    query: dict[str, str],
    body: Any,
    who: dict[str, str],
) -> list[str]:
    response = await client.request(
        method.upper(),
        target,
        params=query,
        json=body,
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )
    if response.status_code < 500:
        return []
    return [
        f"{method.upper()} {target} {query} {body!r:.200} -> {response.status_code}"
        f" {response.text[:200]}"
    ]


@pytest.fixture(params=["orders", "crowdfund", "referrals"])
async def service_client(
    request: pytest.FixtureRequest, service_env: ServiceEnv
) -> AsyncIterator[httpx.AsyncClient]:
    from services.crowdfund.app import create_app as create_crowdfund
    from services.orders.app import create_app as create_orders
    from services.referrals.app import create_app as create_referrals
    from tests.shared.payments.support import payments_env

    name = request.param
    if name == "orders":
        app = create_orders(
            settings_for("orders", service_env("orders", **payments_env("simulated")))
        )
    elif name == "crowdfund":
        app = create_crowdfund(
            settings_for("crowdfund", service_env("crowdfund", **payments_env("simulated")))
        )
    else:
        app = create_referrals(settings_for("referrals", service_env("referrals")))
    async with running(app) as client:
        yield client


async def test_no_operation_answers_5xx_to_hostile_input(
    service_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    spec = (await service_client.get("/openapi.json")).json()
    merchant = f"m_{uuid.uuid4().hex[:8]}"
    callers = [auth("customer"), auth("staff", merchant_id=merchant), {}]
    failures: list[str] = []
    calls = 0
    for path, operations in spec["paths"].items():
        if path.startswith(("/internal", "/webhooks", "/metrics")):
            continue  # signed by HMAC: tested with signed hostile events elsewhere
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            targets = [
                re.sub(r"\{[^}]+\}", value, path)
                for value in (str(uuid.uuid4()), "%00", "A" * 300, "..%2f..%2f")
            ]
            queries = [{p["name"]: "\x00" for p in params if p["in"] == "query"}]
            queries.append({p["name"]: "9" * 40 for p in params if p["in"] == "query"})
            body_schema = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            bodies: list[Any] = [None]
            if body_schema is not None:
                base = _valid_ish(spec, body_schema)
                bodies = [base, *_spoiled(base)]
            # Hostile paths and queries, by everyone, with the body of the right shape.
            for who in callers:
                for target in targets:
                    for query in queries:
                        calls += 1
                        failures += await _call(
                            service_client, method, target, query, bodies[0], who
                        )
            # Every spoiled body, by a customer and by staff.
            for who in callers[:2]:
                for body in bodies[1:]:
                    calls += 1
                    failures += await _call(service_client, method, targets[0], {}, body, who)
    assert calls > 100
    assert failures == [], "\n".join(failures[:20])
