"""Payments through the gateway, on real service processes whose worker loops run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import TEST_SIMULATED_WEBHOOK_SECRET, Platform, TokenFactory
from tests.shared.payments.support import event, signed

pytestmark = pytest.mark.xdist_group("processes")


@pytest.fixture
async def gw(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=10) as client:
        yield client


async def test_a_payment_settles_through_the_worker_and_the_webhook(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    customer = auth("customer")
    response = await gw.post(
        "/v1/payments",
        json={
            "reference": f"test:{uuid.uuid4().hex[:12]}",
            "merchant_id": "m_gateway",
            "amount": 1200,
            "currency": "CNY",
            "payment_method": "pm_card_succeedLater",
        },
        headers={**customer, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    assert response.headers.get_list("x-served-by") == ["orders", "gateway"]
    payment = response.json()
    assert payment["status"] == "processing"
    # The orders worker settles it at the simulated provider and delivers the events to
    # its own webhook endpoint.
    for _ in range(100):
        current = (await gw.get(f"/v1/payments/{payment['id']}", headers=customer)).json()
        if current["status"] != "processing":
            break
        await asyncio.sleep(0.1)
    assert (current["status"], current["net_paid"]) == ("succeeded", 1200)
    assert current["status_history"][-1]["source"] == "webhook"


@pytest.mark.parametrize("service", ["orders", "crowdfund"])
async def test_webhooks_are_reachable_through_the_gateway(
    gw: httpx.AsyncClient, service: str
) -> None:
    payload = event("customer.created", {"id": "cus_gateway", "object": "customer"})
    body, headers = signed(payload, TEST_SIMULATED_WEBHOOK_SECRET)
    response = await gw.post(f"/v1/webhooks/{service}/stripe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-served-by") == [service, "gateway"]
    assert response.json() == {
        "event_id": payload["id"],
        "event_type": "customer.created",
        "status": "ignored",
    }
    forged, forged_headers = signed(payload, "whsec_forged")
    refused = await gw.post(
        f"/v1/webhooks/{service}/stripe", content=forged, headers=forged_headers
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "webhook_signature_invalid"
