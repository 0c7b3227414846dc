"""Every service's OpenAPI document: errors are problem+json with their codes, and required
idempotency keys are required."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from shared.errors import PROBLEM_JSON
from tests.conftest import settings_for

ServiceEnv = Callable[..., dict[str, str]]
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def document(service: str, service_env: ServiceEnv) -> dict[str, Any]:
    from services.crowdfund.app import create_app as crowdfund_app
    from services.orders.app import create_app as orders_app
    from services.referrals.app import create_app as referrals_app

    factories: dict[str, Callable[[Any], FastAPI]] = {
        "orders": orders_app,
        "crowdfund": crowdfund_app,
        "referrals": referrals_app,
    }
    env = service_env(service, PAYMENT_PROVIDER="simulated", SIMULATED_WEBHOOK_SECRET="whsec_x")
    return factories[service](settings_for(service, env)).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]


@pytest.mark.parametrize("service", ["orders", "crowdfund", "referrals"])
def test_every_error_response_is_problem_json_with_its_codes(
    service: str, service_env: ServiceEnv
) -> None:
    doc = document(service, service_env)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "Problem" in doc["components"]["schemas"]
    checked = 0
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            if status[0] not in "45":
                continue
            checked += 1
            where = f"{method} {path} {status}"
            assert response["content"] == {
                PROBLEM_JSON: {**response["content"][PROBLEM_JSON], "schema": PROBLEM_REF}
            }, where
            codes = response["x-problem-codes"]
            assert codes, where
            assert all(f"`{code}`" in response["description"] for code in codes), where
            examples = response["content"][PROBLEM_JSON].get("examples", {})
            assert set(examples) <= set(codes), where
        if op.get("parameters") or op.get("requestBody"):
            assert "validation_error" in op["responses"]["422"]["x-problem-codes"], path
    assert checked > 0


def test_money_endpoints_mark_the_idempotency_key_required(service_env: ServiceEnv) -> None:
    doc = document("orders", service_env)
    required = {}
    for method, path, op in operations(doc):
        for parameter in op.get("parameters", []):
            if parameter["name"] == "Idempotency-Key":
                required[(method, path)] = parameter["required"]
                assert "x-qunbuy-required" not in parameter["schema"]
    assert required[("POST", "/v1/payments")] is True
    assert required[("POST", "/v1/payments/{payment_id}/refunds")] is True
    assert required[("POST", "/v1/payments/{payment_id}/capture")] is True
    assert required[("POST", "/v1/payments/{payment_id}/confirm")] is True
    # Saving a card may be retried with a key, but needs none.
    assert required[("POST", "/v1/payment-methods/setup")] is False


def test_declared_codes_have_examples(service_env: ServiceEnv) -> None:
    doc = document("orders", service_env)
    response = doc["paths"]["/v1/payments"]["post"]["responses"]["402"]
    example = response["content"][PROBLEM_JSON]["examples"]["payment_declined"]["value"]
    assert example["code"] == "payment_declined"
    assert example["status"] == 402
