"""Who may act on a payment: strangers learn nothing, saved cards pay only for their owner."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import TokenFactory
from tests.factories import new_merchant, payment_request
from tests.shared.payments.support import PaymentsApp


def _comparable(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in problem.items() if k not in ("instance", "request_id")}


class TestStrangersLearnNothing:
    @pytest.mark.parametrize(
        ("method", "suffix", "json"),
        [
            ("GET", "", None),
            ("POST", "/capture", {}),
            ("POST", "/refunds", {}),
            ("POST", "/cancel", None),
        ],
    )
    async def test_another_merchants_staff_get_the_answer_of_a_missing_payment(
        self,
        sim_orders: PaymentsApp,
        auth: TokenFactory,
        method: str,
        suffix: str,
        json: dict[str, Any] | None,
    ) -> None:
        merchant = new_merchant()
        paid = await sim_orders.post(
            "/v1/payments", payment_request(merchant_id=merchant), auth("customer")
        )
        assert paid.status_code == 201
        outsider = auth("staff", merchant_id=new_merchant())

        existing = await sim_orders.client.request(
            method,
            f"/v1/payments/{paid.json()['id']}{suffix}",
            json=json,
            headers={**outsider, "Idempotency-Key": uuid.uuid4().hex},
        )
        missing = await sim_orders.client.request(
            method,
            f"/v1/payments/{uuid.uuid4()}{suffix}",
            json=json,
            headers={**outsider, "Idempotency-Key": uuid.uuid4().hex},
        )

        assert existing.status_code == missing.status_code == 404
        assert _comparable(existing.json()) == _comparable(missing.json())
        assert existing.json()["code"] == "payment_not_found"

    async def test_another_customer_cannot_cancel_or_see_a_payment(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        started = await sim_orders.post(
            "/v1/payments", payment_request(payment_method=None), auth("customer")
        )
        assert started.status_code == 201
        path = f"/v1/payments/{started.json()['id']}"
        stranger = auth("customer")

        for response in (
            await sim_orders.client.get(path, headers=stranger),
            await sim_orders.client.post(f"{path}/cancel", headers=stranger),
        ):
            assert response.status_code == 404
            assert response.json()["code"] == "payment_not_found"
        assert (await sim_orders.client.get(path, headers=stranger)).status_code == 404


class TestSavedPaymentMethods:
    async def _saved_card(self, app: PaymentsApp, owner: dict[str, str]) -> str:
        setup = await app.post(
            "/v1/payment-methods/setup", {"payment_method": "pm_card_visa"}, owner
        )
        assert setup.status_code == 201, setup.text
        method = setup.json()["payment_method_id"]
        assert isinstance(method, str)
        return method

    async def test_a_customer_cannot_pay_with_another_customers_saved_card(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        card_of_a = await self._saved_card(
            sim_orders, auth("customer", sub="cust_a_" + uuid.uuid4().hex[:6])
        )
        merchant = new_merchant()

        taken = await sim_orders.post(
            "/v1/payments",
            payment_request(merchant_id=merchant, payment_method=card_of_a),
            auth("customer"),
        )

        assert taken.status_code == 422
        assert taken.json()["code"] == "payment_method_unavailable"
        assert await sim_orders.count("payment", merchant_id=merchant) == 0

    async def test_the_owner_pays_with_their_saved_card(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        owner = auth("customer", sub="cust_" + uuid.uuid4().hex[:8])
        card = await self._saved_card(sim_orders, owner)

        paid = await sim_orders.post("/v1/payments", payment_request(payment_method=card), owner)

        assert paid.status_code == 201, paid.text
        assert paid.json()["status"] == "succeeded"

    async def test_confirming_with_another_customers_saved_card_is_refused(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        card_of_a = await self._saved_card(sim_orders, auth("customer"))
        payer = auth("customer")
        started = await sim_orders.post("/v1/payments", payment_request(payment_method=None), payer)
        assert started.status_code == 201

        confirm = await sim_orders.post(
            f"/v1/payments/{started.json()['id']}/confirm", {"payment_method": card_of_a}, payer
        )

        assert confirm.status_code == 422
        assert confirm.json()["code"] == "payment_method_unavailable"
        after = await sim_orders.client.get(f"/v1/payments/{started.json()['id']}", headers=payer)
        assert after.json()["status"] == "requires_payment_method"

    async def test_an_unknown_simulated_saved_card_gets_the_same_answer(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.post(
            "/v1/payments",
            payment_request(payment_method="pm_sim_" + uuid.uuid4().hex[:24]),
            auth("customer"),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "payment_method_unavailable"
