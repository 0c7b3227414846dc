"""The orders payment API on the Stripe provider (the real SDK over HTTP to localstripe)."""

from __future__ import annotations

from typing import Any

import stripe

from shared.payments import customer_message
from tests.conftest import TokenFactory
from tests.shared.payments.support import (
    PaymentsApp,
    card_needing_3ds,
    new_merchant,
    new_reference,
)


async def create(app: PaymentsApp, headers: dict[str, str], merchant: str, **overrides: Any) -> Any:
    return await app.post(
        "/v1/payments",
        {
            "reference": new_reference(),
            "merchant_id": merchant,
            "amount": 1000,
            "currency": "CNY",
            "payment_method": "pm_card_visa",
            **overrides,
        },
        headers,
    )


async def test_pay_capture_partly_refund_all(
    stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
) -> None:
    merchant = new_merchant()
    staff = auth("staff", merchant_id=merchant)
    held = await create(stripe_orders, auth("customer"), merchant, capture_method="manual")
    assert held.status_code == 201, held.text
    payment = held.json()
    assert payment["status"] == "requires_capture"
    assert payment["provider"] == "stripe"
    assert payment["provider_payment_id"].startswith("pi_")

    captured = await stripe_orders.post(
        f"/v1/payments/{payment['id']}/capture", {"amount": 600}, staff
    )
    assert captured.status_code == 200, captured.text
    assert (captured.json()["status"], captured.json()["amount_captured"]) == ("succeeded", 600)

    too_much = await stripe_orders.post(
        f"/v1/payments/{payment['id']}/refunds", {"amount": 601}, staff
    )
    assert too_much.status_code == 422
    refund = await stripe_orders.post(f"/v1/payments/{payment['id']}/refunds", {}, staff)
    assert refund.status_code == 201, refund.text
    assert refund.json()["amount"] == 600
    assert refund.json()["provider_refund_id"].startswith("re_")

    current = (
        await stripe_orders.client.get(f"/v1/payments/{payment['id']}", headers=staff)
    ).json()
    assert (current["amount_captured"], current["amount_refunded"], current["net_paid"]) == (
        600,
        600,
        0,
    )
    # Stripe (here localstripe) agrees: the refund carries our ids in its metadata.
    listed = await localstripe_sdk.v1.refunds.list_async(
        {"payment_intent": payment["provider_payment_id"]}
    )
    ours = [r.to_dict() for r in listed.data if r.to_dict().get("payment_intent")]
    assert [r["amount"] for r in ours] == [600]
    assert ours[0]["metadata"]["qunbuy_refund_id"] == refund.json()["id"]


async def test_declining_card(stripe_orders: PaymentsApp, auth: TokenFactory) -> None:
    customer = auth("customer")
    response = await create(
        stripe_orders, customer, new_merchant(), payment_method="pm_card_chargeCustomerFail"
    )
    assert response.status_code == 402
    problem = response.json()
    assert (problem["code"], problem["decline_code"]) == ("payment_declined", "card_declined")
    assert problem["detail"] == customer_message("card_declined")
    payment = (
        await stripe_orders.client.get(f"/v1/payments/{problem['payment']['id']}", headers=customer)
    ).json()
    assert (payment["status"], payment["failure_code"]) == (
        "requires_payment_method",
        "card_declined",
    )


async def test_3d_secure_card_waits_for_the_customer_and_can_be_canceled(
    stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
) -> None:
    customer = auth("customer")
    card = await card_needing_3ds(localstripe_sdk)
    response = await create(stripe_orders, customer, new_merchant(), payment_method=card)
    assert response.status_code == 201
    payment = response.json()
    assert payment["status"] == "requires_action"
    assert payment["next_action"]["type"] == "use_stripe_sdk"
    simulated_only = await stripe_orders.client.post(
        f"/v1/payments/{payment['id']}/simulate-action", json={"succeed": True}, headers=customer
    )
    # The simulated provider's endpoint does not exist beside a real provider.
    assert simulated_only.status_code == 404
    assert simulated_only.json()["code"] == "not_found"
    paths = stripe_orders.app.openapi()["paths"]
    assert not any("simulate-action" in path for path in paths)
    canceled = await stripe_orders.client.post(
        f"/v1/payments/{payment['id']}/cancel", headers=customer
    )
    assert canceled.json()["status"] == "canceled"


async def test_client_side_confirmation_flow(
    stripe_orders: PaymentsApp, auth: TokenFactory
) -> None:
    customer = auth("customer")
    created = await create(stripe_orders, customer, new_merchant(), payment_method=None)
    payment = created.json()
    assert payment["status"] == "requires_payment_method"
    assert payment["client_secret"].startswith(payment["provider_payment_id"])
    confirmed = await stripe_orders.post(
        f"/v1/payments/{payment['id']}/confirm", {"payment_method": "pm_card_visa"}, customer
    )
    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["net_paid"]) == ("succeeded", 1000)


async def test_saved_card(stripe_orders: PaymentsApp, auth: TokenFactory) -> None:
    customer = auth("customer")
    response = await stripe_orders.post(
        "/v1/payment-methods/setup", {"payment_method": "pm_card_visa"}, customer
    )
    assert response.status_code == 201, response.text
    setup = response.json()
    assert setup["provider_setup_id"].startswith("seti_")
    assert setup["status"] == "succeeded"
    assert setup["payment_method_id"].startswith("pm_")
