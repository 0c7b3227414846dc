"""The orders payment API: bad input, who may see what, and retries that pay once."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest

from shared.payments import (
    PaymentProvider,
    PaymentProviderUnavailable,
    ProviderUnavailable,
    create_payment,
    new_payment_id,
)
from shared.payments._repository import get_payment
from tests.conftest import TokenFactory
from tests.factories import new_merchant, new_reference, payment_request
from tests.shared.payments.support import PaymentsApp


class AnswerLost:
    """A provider whose confirmations happen but whose answers are lost on the way back."""

    def __init__(self, real: PaymentProvider) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def confirm_payment(self, *args: Any, **kwargs: Any) -> Any:
        await self._real.confirm_payment(*args, **kwargs)
        raise ProviderUnavailable("the connection dropped after the provider answered")


class TestBadInput:
    @pytest.mark.parametrize(
        ("overrides", "status", "code"),
        [
            ({"currency": "XYZ"}, 422, "unknown_currency"),
            ({"currency": "yuan"}, 422, "unknown_currency"),
            ({"amount": 0}, 422, "payment_amount_invalid"),
            ({"amount": -500}, 422, "payment_amount_invalid"),
            ({"amount": 5_000_001}, 422, "payment_amount_above_maximum"),
            ({"amount": 10.5}, 422, "validation_error"),
            ({"amount": "1000"}, 422, "validation_error"),
            ({"method": "paypal"}, 422, "validation_error"),
            ({"payment_method": "pm_card_unknown"}, 409, "payment_provider_rejected"),
        ],
    )
    async def test_refused_and_nothing_recorded(
        self,
        sim_orders: PaymentsApp,
        auth: TokenFactory,
        overrides: dict[str, Any],
        status: int,
        code: str,
    ) -> None:
        request = payment_request(**overrides)
        response = await sim_orders.post("/v1/payments", request, auth("customer"))
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
        assert await sim_orders.count("payment", reference=request["reference"]) == 0
        assert await sim_orders.provider_intents(reference=request["reference"]) == []

    async def test_the_maximum_itself_is_accepted(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.post(
            "/v1/payments", payment_request(amount=5_000_000), auth("customer")
        )
        assert response.status_code == 201
        assert response.json()["amount"] == 5_000_000

    async def test_currency_is_normalized(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.post(
            "/v1/payments", payment_request(currency="jpy", amount=300), auth("customer")
        )
        assert response.status_code == 201
        assert (response.json()["currency"], response.json()["amount_captured"]) == ("JPY", 300)

    async def test_an_idempotency_key_is_required(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        request = payment_request()
        response = await sim_orders.post("/v1/payments", request, auth("customer"), key=None)
        assert response.status_code == 400
        assert response.json()["code"] == "idempotency_key_required"
        assert await sim_orders.count("payment", reference=request["reference"]) == 0

    async def test_payments_are_off_when_no_provider_is_configured(
        self, orders_client: Any, auth: TokenFactory
    ) -> None:
        # The shared fixture runs in production mode without PAYMENT_PROVIDER.
        response = await orders_client.post(
            "/v1/payments",
            json=payment_request(),
            headers={**auth("customer"), "Idempotency-Key": "k1"},
        )
        assert response.status_code == 503
        assert response.json()["code"] == "payments_not_configured"
        # Who is asking is checked first: a stranger learns nothing about the configuration.
        forged = await orders_client.get(
            f"/v1/payments/{uuid.uuid4()}", headers={"Authorization": "Bearer forged"}
        )
        assert forged.status_code == 401


class TestWhoSeesWhat:
    async def test_visibility(self, sim_orders: PaymentsApp, auth: TokenFactory) -> None:
        merchant = new_merchant()
        payer = auth("customer")
        payment = (
            await sim_orders.post("/v1/payments", payment_request(merchant_id=merchant), payer)
        ).json()
        path = f"/v1/payments/{payment['id']}"

        own = await sim_orders.client.get(path, headers=payer)
        assert own.status_code == 200
        assert own.json()["client_secret"]

        staff = await sim_orders.client.get(path, headers=auth("staff", merchant_id=merchant))
        assert staff.status_code == 200
        assert staff.json()["client_secret"] is None

        # Another merchant's staff learn nothing: the same answer as for no payment at all.
        other_staff = await sim_orders.client.get(
            path, headers=auth("staff", merchant_id="m_other")
        )
        assert other_staff.status_code == 404
        assert other_staff.json()["code"] == "payment_not_found"

        stranger = await sim_orders.client.get(path, headers=auth("customer"))
        assert stranger.status_code == 404
        assert stranger.json()["code"] == "payment_not_found"

        anonymous = await sim_orders.client.get(path)
        assert anonymous.status_code == 401

        missing = await sim_orders.client.get(f"/v1/payments/{uuid.uuid4()}", headers=payer)
        assert missing.status_code == 404

    async def test_only_customers_start_payments(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.post("/v1/payments", payment_request(), auth("distributor"))
        assert response.status_code == 403
        assert response.json()["code"] == "role_required"

    async def test_another_customer_cannot_confirm(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        payment = (
            await sim_orders.post(
                "/v1/payments", payment_request(payment_method=None), auth("customer")
            )
        ).json()
        response = await sim_orders.post(
            f"/v1/payments/{payment['id']}/confirm",
            {"payment_method": "pm_card_visa"},
            auth("customer"),
        )
        assert response.status_code == 404


class TestRetries:
    async def test_same_idempotency_key_replays_the_payment(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        customer = auth("customer")
        request = payment_request()
        first = await sim_orders.post("/v1/payments", request, customer, key="pay-1")
        second = await sim_orders.post("/v1/payments", request, customer, key="pay-1")
        assert first.status_code == second.status_code == 201
        assert second.headers.get("idempotent-replayed") == "true"
        assert second.json()["id"] == first.json()["id"]
        assert await sim_orders.count("payment", reference=request["reference"]) == 1
        assert len(await sim_orders.provider_intents(reference=request["reference"])) == 1

    async def test_a_retried_charge_after_a_crash_charges_once(
        self, sim_orders: PaymentsApp
    ) -> None:
        """The first run charges, then the provider's answer is lost (the process died, the
        connection dropped). The recorded intent stays; the retry derives the same payment id
        and provider keys, resumes, and the provider answers with the first charge instead of
        charging again."""
        ctx = sim_orders.ctx
        reference = new_reference()
        payment_id = new_payment_id(ctx.service, "api", "user_crash", "key-1")
        kwargs: dict[str, Any] = {
            "payment_id": payment_id,
            "reference": reference,
            "merchant_id": new_merchant(),
            "customer_id": "user_crash",
            "amount": 2500,
            "currency": "CNY",
            "payment_method": "pm_card_visa",
        }
        # The crash: the provider charged the card, but its answer never reached us.
        with pytest.raises(PaymentProviderUnavailable):
            await create_payment(replace(ctx, provider=AnswerLost(ctx.provider)), **kwargs)
        assert await sim_orders.count("payment", reference=reference) == 1
        async with sim_orders.app.state.sessionmaker() as session:
            recorded = await get_payment(session, ctx.tables, payment_id)
        assert recorded is not None
        assert recorded.status == "requires_confirmation"

        retried = await create_payment(ctx, **kwargs)
        assert retried.status == "succeeded"
        assert retried.provider_payment_id == recorded.provider_payment_id
        intents = await sim_orders.provider_intents(reference=reference)
        assert len(intents) == 1
        charges = await sim_orders.count(
            "simulated_object", parent_id=intents[0]["id"], type="charge"
        )
        assert charges == 1
        third = await create_payment(ctx, **kwargs)
        assert third.id == retried.id
        assert await sim_orders.count("payment", reference=reference) == 1
