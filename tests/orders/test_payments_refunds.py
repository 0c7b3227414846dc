"""Refunds: who may refund, how much, and that amounts always reconcile."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import TokenFactory
from tests.factories import new_merchant, new_reference, paid_payment
from tests.shared.payments.support import PaymentsApp


async def get(app: PaymentsApp, payment_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(f"/v1/payments/{payment_id}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_partial_then_full_refund_reconciles(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    payment, staff = await paid_payment(sim_orders, auth)
    path = f"/v1/payments/{payment['id']}/refunds"
    first = await sim_orders.post(path, {"amount": 300, "reason": "requested_by_customer"}, staff)
    assert first.status_code == 201, first.text
    assert (first.json()["amount"], first.json()["status"]) == (300, "succeeded")
    assert first.json()["reason"] == "requested_by_customer"
    rest = await sim_orders.post(path, {}, staff)  # no amount: all that remains
    assert rest.json()["amount"] == 700

    current = await get(sim_orders, payment["id"], staff)
    assert (current["amount_captured"], current["amount_refunded"], current["net_paid"]) == (
        1000,
        1000,
        0,
    )
    assert [r["amount"] for r in current["refunds"]] == [300, 700]
    assert current["status"] == "succeeded"  # a refunded payment still succeeded, as on Stripe
    assert (await sim_orders.event_types(payment["id"])) == [
        "payment.succeeded",
        "payment.refunded",
        "payment.refunded",
    ]
    # The provider's events (refund.created, charge.refunded) change nothing more.
    await sim_orders.tick()
    again = await get(sim_orders, payment["id"], staff)
    assert (again["amount_refunded"], len(again["refunds"])) == (1000, 2)
    assert len(await sim_orders.event_types(payment["id"])) == 3

    nothing_left = await sim_orders.post(path, {}, staff)
    assert nothing_left.status_code == 422
    assert nothing_left.json()["code"] == "refund_exceeds_refundable"


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (1001, "refund_exceeds_refundable"),
        (0, "refund_amount_invalid"),
        (-5, "refund_amount_invalid"),
    ],
)
async def test_bad_refund_amounts_are_refused_and_nothing_is_recorded(
    sim_orders: PaymentsApp, auth: TokenFactory, amount: int, code: str
) -> None:
    payment, staff = await paid_payment(sim_orders, auth)
    response = await sim_orders.post(
        f"/v1/payments/{payment['id']}/refunds", {"amount": amount}, staff
    )
    assert response.status_code == 422
    assert response.json()["code"] == code
    assert await sim_orders.count("refund", payment_id=uuid.UUID(payment["id"])) == 0
    intent = payment["provider_payment_id"]
    assert await sim_orders.count("simulated_object", parent_id=intent, type="refund") == 0
    if code == "refund_exceeds_refundable":
        assert response.json()["refundable"] == 1000


async def test_who_may_refund(sim_orders: PaymentsApp, auth: TokenFactory) -> None:
    payment, _ = await paid_payment(sim_orders, auth)
    path = f"/v1/payments/{payment['id']}/refunds"
    # Neither a stranger nor another merchant's staff learns that the payment exists: a
    # customer may refund no payment (the same 403 for one that does not exist), and staff
    # of another merchant find none.
    as_customer = await sim_orders.post(path, {"amount": 100}, auth("customer"))
    nowhere = await sim_orders.post(
        f"/v1/payments/{uuid.uuid4()}/refunds", {"amount": 100}, auth("customer")
    )
    for refused in (as_customer, nowhere):
        assert refused.status_code == 403
        assert refused.json()["code"] == "role_required"
    other_staff = await sim_orders.post(path, {"amount": 100}, auth("staff", merchant_id="m_x"))
    assert other_staff.status_code == 404
    assert other_staff.json()["code"] == "payment_not_found"
    admin = await sim_orders.post(path, {"amount": 100}, auth("admin"))
    assert admin.status_code == 201
    assert await sim_orders.count("refund", payment_id=uuid.UUID(payment["id"])) == 1


async def test_an_unpaid_payment_cannot_be_refunded(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    merchant = new_merchant()
    pending = await sim_orders.post(
        "/v1/payments",
        {
            "reference": new_reference(),
            "merchant_id": merchant,
            "amount": 1000,
            "currency": "CNY",
            "payment_method": "pm_card_authenticationRequired",
        },
        auth("customer"),
    )
    response = await sim_orders.post(
        f"/v1/payments/{pending.json()['id']}/refunds", {}, auth("staff", merchant_id=merchant)
    )
    assert response.status_code == 409
    assert response.json()["code"] == "payment_not_refundable"


async def test_a_retried_refund_request_refunds_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    payment, staff = await paid_payment(sim_orders, auth)
    path = f"/v1/payments/{payment['id']}/refunds"
    first = await sim_orders.post(path, {"amount": 250}, staff, key="refund-1")
    second = await sim_orders.post(path, {"amount": 250}, staff, key="refund-1")
    assert second.json()["id"] == first.json()["id"]
    current = await get(sim_orders, payment["id"], staff)
    assert (current["amount_refunded"], len(current["refunds"])) == (250, 1)


async def test_concurrent_refunds_never_exceed_what_was_paid(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """Five refunds of 400 race for a payment of 1000: the payment row is locked, so they
    are checked one after the other and exactly two fit."""
    payment, staff = await paid_payment(sim_orders, auth)
    path = f"/v1/payments/{payment['id']}/refunds"
    responses = await asyncio.gather(
        *(sim_orders.post(path, {"amount": 400}, staff) for _ in range(5))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 201, 422, 422, 422], [r.text for r in responses]
    refused = [r.json() for r in responses if r.status_code == 422]
    assert {r["code"] for r in refused} == {"refund_exceeds_refundable"}
    current = await get(sim_orders, payment["id"], staff)
    assert (current["amount_refunded"], current["net_paid"]) == (800, 200)
    intent = payment["provider_payment_id"]
    assert await sim_orders.count("simulated_object", parent_id=intent, type="refund") == 2
