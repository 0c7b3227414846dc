"""Every test payment method of the simulated provider, end to end through the orders API,
with its events delivered through the webhook endpoint as Stripe's would be."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.payments import TEST_PAYMENT_METHODS, WEBHOOK_EVENTS, customer_message
from tests.conftest import TokenFactory
from tests.shared.payments.support import PaymentsApp, new_merchant, new_reference

# token -> (HTTP status of the payment request, status right after, status once settled)
EXPECTED: dict[str, tuple[int, str, str]] = {
    "pm_card_visa": (201, "succeeded", "succeeded"),
    "pm_card_mastercard": (201, "succeeded", "succeeded"),
    "pm_card_chargeDeclined": (402, "requires_payment_method", "requires_payment_method"),
    "pm_card_visa_chargeDeclined": (402, "requires_payment_method", "requires_payment_method"),
    "pm_card_chargeDeclinedInsufficientFunds": (
        402,
        "requires_payment_method",
        "requires_payment_method",
    ),
    "pm_card_visa_chargeDeclinedInsufficientFunds": (
        402,
        "requires_payment_method",
        "requires_payment_method",
    ),
    "pm_card_chargeCustomerFail": (402, "requires_payment_method", "requires_payment_method"),
    "pm_card_authenticationRequired": (201, "requires_action", "requires_action"),
    "pm_card_threeDSecure2Required": (201, "requires_action", "requires_action"),
    "pm_card_alwaysAuthenticate": (201, "requires_action", "requires_action"),
    "pm_card_succeedLater": (201, "processing", "succeeded"),
    "pm_card_failLater": (201, "processing", "requires_payment_method"),
    "pm_card_createDispute": (201, "succeeded", "succeeded"),
    "pm_wechat_pay": (201, "requires_action", "requires_action"),
    "pm_alipay": (201, "requires_action", "requires_action"),
}
# the settled status -> the last event received about the intent
LAST_EVENT = {
    "succeeded": "payment_intent.succeeded",
    "requires_payment_method": "payment_intent.payment_failed",
    "requires_action": "payment_intent.requires_action",
}
FAILURE_CODES = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeCustomerFail": "generic_decline",
    "pm_card_failLater": "generic_decline",
}


def test_every_test_payment_method_has_an_expected_path() -> None:
    assert set(EXPECTED) == set(TEST_PAYMENT_METHODS)


async def pay(
    app: PaymentsApp,
    headers: dict[str, str],
    *,
    token: str | None = "pm_card_visa",
    amount: int = 1999,
    merchant_id: str | None = None,
    **extra: Any,
) -> Any:
    method = TEST_PAYMENT_METHODS[token].type if token else extra.pop("method", "card")
    body = {
        "reference": new_reference(),
        "merchant_id": merchant_id or new_merchant(),
        "amount": amount,
        "currency": "CNY",
        "method": method,
        "payment_method": token,
        **extra,
    }
    return await app.post("/v1/payments", body, headers)


def payment_of(response: Any) -> dict[str, Any]:
    body = response.json()
    return dict(body.get("payment", body))


@pytest.mark.parametrize("token", sorted(EXPECTED))
async def test_test_payment_method_path(
    sim_orders: PaymentsApp, auth: TokenFactory, token: str
) -> None:
    customer = auth("customer")
    http_status, first, settled = EXPECTED[token]
    response = await pay(sim_orders, customer, token=token)
    assert response.status_code == http_status, response.text
    payment = payment_of(response)
    assert payment["status"] == first
    assert payment["provider"] == "simulated"
    assert payment["provider_payment_id"].startswith("pi_sim_")
    if http_status == 402:
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "payment_declined"
        assert problem["decline_code"] == FAILURE_CODES[token]
        assert problem["detail"] == customer_message(FAILURE_CODES[token])

    await sim_orders.tick()  # settle "later" outcomes, deliver every event to the webhook

    current = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=customer)
    ).json()
    assert current["status"] == settled
    assert current["failure_code"] == FAILURE_CODES.get(token)
    if token in FAILURE_CODES:
        assert current["failure_message"] == customer_message(FAILURE_CODES[token])
    paid = 1999 if settled == "succeeded" else 0
    assert (current["amount_captured"], current["net_paid"]) == (paid, paid)
    assert current["dispute_status"] == (
        "needs_response" if token == "pm_card_createDispute" else None
    )

    # Every event the provider sent went through the webhook, applied once; only those a
    # webhook endpoint subscribes to were sent (not payment_intent.created, charge.succeeded).
    received = await sim_orders.inbox_types(payment["provider_payment_id"])
    assert received[-1] == LAST_EVENT[settled], received
    assert set(received) <= WEBHOOK_EVENTS, received
    if first == "processing":
        assert received[0] == "payment_intent.processing"
    assert await sim_orders.undelivered_events(payment["provider_payment_id"]) == 0
    events = await sim_orders.event_types(payment["id"])
    assert events.count("payment.succeeded") == (1 if settled == "succeeded" else 0)
    assert events.count("payment.failed") == (1 if token in FAILURE_CODES else 0)
    assert events.count("payment.disputed") == (1 if token == "pm_card_createDispute" else 0)


@pytest.mark.parametrize(
    ("token", "action"),
    [
        ("pm_card_authenticationRequired", "use_stripe_sdk"),
        ("pm_wechat_pay", "wechat_pay_display_qr_code"),
        ("pm_alipay", "alipay_handle_redirect"),
    ],
)
async def test_customer_action_then_success(
    sim_orders: PaymentsApp, auth: TokenFactory, token: str, action: str
) -> None:
    customer = auth("customer")
    payment = (await pay(sim_orders, customer, token=token)).json()
    assert payment["next_action"]["type"] == action
    assert payment["client_secret"].startswith(payment["provider_payment_id"])
    done = await sim_orders.client.post(
        f"/v1/payments/{payment['id']}/simulate-action", json={"succeed": True}, headers=customer
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert done.json()["next_action"] is None
    assert done.json()["net_paid"] == 1999
    history = [(h["from_status"], h["to_status"]) for h in done.json()["status_history"]]
    assert history[-2:] == [
        ("requires_confirmation", "requires_action"),
        ("requires_action", "succeeded"),
    ]


async def test_failed_authentication_then_another_card(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    customer = auth("customer")
    payment = (await pay(sim_orders, customer, token="pm_card_authenticationRequired")).json()
    failed = await sim_orders.client.post(
        f"/v1/payments/{payment['id']}/simulate-action", json={"succeed": False}, headers=customer
    )
    assert failed.status_code == 402
    assert failed.json()["decline_code"] == "payment_intent_authentication_failure"
    retried = await sim_orders.post(
        f"/v1/payments/{payment['id']}/confirm", {"payment_method": "pm_card_visa"}, customer
    )
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "succeeded"
    assert retried.json()["failure_code"] is None
    assert retried.json()["id"] == payment["id"]


async def test_declined_then_retried_with_another_card_on_the_same_attempt(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    customer = auth("customer")
    declined = await pay(sim_orders, customer, token="pm_card_chargeDeclinedInsufficientFunds")
    payment_id = declined.json()["payment"]["id"]
    again = await sim_orders.post(
        f"/v1/payments/{payment_id}/confirm", {"payment_method": "pm_card_chargeDeclined"}, customer
    )
    assert again.status_code == 402
    assert again.json()["decline_code"] == "generic_decline"
    paid = await sim_orders.post(
        f"/v1/payments/{payment_id}/confirm", {"payment_method": "pm_card_visa"}, customer
    )
    assert paid.json()["status"] == "succeeded"
    failures = [h["failure_code"] for h in paid.json()["status_history"] if h["failure_code"]]
    assert failures == ["insufficient_funds", "generic_decline"]


async def test_payment_without_payment_method_is_confirmed_by_the_client(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    customer = auth("customer")
    response = await pay(sim_orders, customer, token=None, method="wechat_pay")
    assert response.status_code == 201
    payment = response.json()
    assert payment["status"] == "requires_payment_method"
    assert payment["client_secret"]
    confirmed = await sim_orders.post(
        f"/v1/payments/{payment['id']}/confirm", {"payment_method": "pm_wechat_pay"}, customer
    )
    assert confirmed.json()["status"] == "requires_action"
    alipay = (await pay(sim_orders, customer, token=None, method="alipay")).json()
    wrong_type = await sim_orders.post(
        f"/v1/payments/{alipay['id']}/confirm",
        {"payment_method": "pm_card_visa"},
        customer,
    )
    assert wrong_type.status_code == 409
    assert wrong_type.json()["code"] == "payment_provider_rejected"


class TestCaptureAndCancel:
    async def test_staff_capture_partially_and_the_rest_is_released(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        customer = auth("customer")
        held = (
            await pay(
                sim_orders, customer, amount=1000, merchant_id=merchant, capture_method="manual"
            )
        ).json()
        assert held["status"] == "requires_capture"
        assert held["amount_captured"] == 0
        refused = await sim_orders.post(
            f"/v1/payments/{held['id']}/capture", {"amount": 600}, customer
        )
        assert refused.status_code == 403
        too_much = await sim_orders.post(
            f"/v1/payments/{held['id']}/capture",
            {"amount": 1001},
            auth("staff", merchant_id=merchant),
        )
        assert too_much.status_code == 422
        assert too_much.json()["code"] == "capture_amount_invalid"
        captured = await sim_orders.post(
            f"/v1/payments/{held['id']}/capture",
            {"amount": 600},
            auth("staff", merchant_id=merchant),
        )
        assert captured.status_code == 200, captured.text
        body = captured.json()
        assert (body["status"], body["amount_captured"], body["net_paid"]) == (
            "succeeded",
            600,
            600,
        )
        assert body["client_secret"] is None  # only the payer sees it
        again = await sim_orders.post(
            f"/v1/payments/{held['id']}/capture", {}, auth("staff", merchant_id=merchant)
        )
        assert again.status_code == 409
        assert again.json()["code"] == "payment_not_capturable"
        assert (await sim_orders.event_types(held["id"])).count("payment.succeeded") == 1

    async def test_full_capture_by_default(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        held = (
            await pay(
                sim_orders,
                auth("customer"),
                amount=800,
                merchant_id=merchant,
                capture_method="manual",
            )
        ).json()
        captured = await sim_orders.post(f"/v1/payments/{held['id']}/capture", {}, auth("admin"))
        assert captured.json()["amount_captured"] == 800

    async def test_cancel_before_payment_and_not_after(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        customer = auth("customer")
        waiting = (await pay(sim_orders, customer, token="pm_card_authenticationRequired")).json()
        canceled = await sim_orders.client.post(
            f"/v1/payments/{waiting['id']}/cancel", headers=customer
        )
        assert canceled.status_code == 200
        assert canceled.json()["status"] == "canceled"
        assert (await sim_orders.event_types(waiting["id"])) == ["payment.canceled"]
        paid = (await pay(sim_orders, customer)).json()
        refused = await sim_orders.client.post(
            f"/v1/payments/{paid['id']}/cancel", headers=customer
        )
        assert refused.status_code == 409
        assert refused.json()["code"] == "payment_not_cancelable"

    async def test_manual_capture_is_for_cards_only(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await pay(
            sim_orders, auth("customer"), token="pm_wechat_pay", capture_method="manual"
        )
        assert response.status_code == 422
        assert response.json()["code"] == "capture_method_unsupported"


class TestSavedCards:
    @pytest.mark.parametrize(
        ("token", "status", "failure"),
        [
            ("pm_card_visa", "succeeded", None),
            ("pm_card_chargeCustomerFail", "succeeded", None),
            ("pm_card_chargeDeclined", "requires_payment_method", "generic_decline"),
            (
                "pm_card_chargeDeclinedInsufficientFunds",
                "requires_payment_method",
                "insufficient_funds",
            ),
            ("pm_card_authenticationRequired", "requires_action", None),
        ],
    )
    async def test_setup(
        self,
        sim_orders: PaymentsApp,
        auth: TokenFactory,
        token: str,
        status: str,
        failure: str | None,
    ) -> None:
        customer = auth("customer")
        response = await sim_orders.post(
            "/v1/payment-methods/setup", {"payment_method": token}, customer
        )
        assert response.status_code == 201, response.text
        setup = response.json()
        assert (setup["status"], setup["failure_code"]) == (status, failure)
        assert bool(setup["payment_method_id"]) == (status != "requires_payment_method")
        await sim_orders.tick()
        again = await sim_orders.client.get(
            f"/v1/payment-methods/setup/{setup['id']}", headers=customer
        )
        assert again.json()["status"] == status
        other = await sim_orders.client.get(
            f"/v1/payment-methods/setup/{setup['id']}", headers=auth("customer")
        )
        assert other.status_code == 404

    async def test_one_provider_customer_per_user(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        user = f"user_{uuid.uuid4().hex[:8]}"
        customer = auth("customer", sub=user)
        for _ in range(2):
            await sim_orders.post(
                "/v1/payment-methods/setup", {"payment_method": "pm_card_visa"}, customer
            )
        assert await sim_orders.count("payment_customer", user_id=user) == 1
