"""Validly signed provider events of unexpected shape: refused (4xx) or recorded and ignored,
never a 500, never half-applied. Signed with the simulated provider's secret, the scheme and
code path Stripe's events take."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import TokenFactory
from tests.shared.payments.support import (
    SIMULATED_WEBHOOK_SECRET,
    PaymentsApp,
    event,
    new_merchant,
    new_reference,
    signed,
)

WEBHOOK = "/webhooks/stripe"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


async def _post_raw(app: PaymentsApp, body: bytes) -> Any:
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), SIMULATED_WEBHOOK_SECRET
    )
    return await app.client.post(
        WEBHOOK,
        content=body,
        headers={"Stripe-Signature": header, "content-type": "application/json"},
    )


class TestRefusedBeforeTheDatabase:
    @pytest.mark.parametrize(
        "mutate",
        [
            pytest.param(lambda e: e.pop("id"), id="no-id"),
            pytest.param(lambda e: e.update(id="evt_" + "x" * 300), id="id-over-255"),
            pytest.param(lambda e: e.update(id=12345), id="numeric-id"),
            pytest.param(lambda e: e.update(created=10**20), id="huge-created"),
            pytest.param(lambda e: e.update(created=-5), id="negative-created"),
            pytest.param(lambda e: e.update(created=1.5), id="float-created"),
            pytest.param(lambda e: e.update(created=True), id="boolean-created"),
            pytest.param(lambda e: e.update(data=[1, 2]), id="data-a-list"),
            pytest.param(lambda e: e["data"].pop("object"), id="no-object"),
            pytest.param(lambda e: e.update(type="t" * 101), id="type-over-100"),
            pytest.param(lambda e: e.update(id="evt_\x00nul"), id="nul-id"),
            pytest.param(lambda e: e["data"]["object"].update(note="a\x00b"), id="nul-inside"),
            pytest.param(lambda e: e["data"]["object"].update(deep=_nested(200)), id="deep"),
        ],
    )
    async def test_an_event_of_impossible_shape_is_a_400_and_not_recorded(
        self, sim_orders: PaymentsApp, mutate: Any
    ) -> None:
        payload = event("payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"})
        mutate(payload)
        body, headers = signed(payload, SIMULATED_WEBHOOK_SECRET)

        response = await sim_orders.client.post(WEBHOOK, content=body, headers=headers)

        assert response.status_code == 400, response.text
        assert response.json()["code"] == "webhook_payload_invalid"
        recorded_as = str(payload.get("id")).replace("\x00", "")
        assert await sim_orders.count("payment_webhook_inbox", event_id=recorded_as) == 0

    @pytest.mark.parametrize(
        "body",
        [
            b'{"id": "evt_1", "object": "event", "created": NaN, "type": "x.y", "data": {}}',
            b'{"id": "evt_1", "object": "event", "created": Infinity}',
            b"[" * 100_000 + b"]" * 100_000,
            b"not json at all",
        ],
        ids=["nan", "infinity", "deeply-nested-array", "not-json"],
    )
    async def test_a_body_that_is_not_strict_json_is_a_400(
        self, sim_orders: PaymentsApp, body: bytes
    ) -> None:
        response = await _post_raw(sim_orders, body)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "webhook_payload_invalid"


class TestRecordedAndIgnored:
    async def test_an_intent_event_with_fields_of_the_wrong_type_changes_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.post(
            "/v1/payments",
            {
                "reference": new_reference(),
                "merchant_id": new_merchant(),
                "amount": 1000,
                "currency": "CNY",
            },
            auth("customer"),
        )
        assert response.status_code == 201, response.text
        payment = response.json()
        intent = {
            "id": payment["provider_payment_id"],
            "object": "payment_intent",
            "status": "succeeded",
            "amount": "a lot",
            "amount_received": {"nested": True},
            "capture_method": 7,
            "currency": ["cny"],
            "metadata": "not a mapping",
            "latest_charge": 3.5,
        }
        payload = event("payment_intent.succeeded", intent, event_id=f"evt_{uuid.uuid4().hex}")
        body, headers = signed(payload, SIMULATED_WEBHOOK_SECRET)

        answered = await sim_orders.client.post(WEBHOOK, content=body, headers=headers)

        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "invalid"
        inbox = sim_orders.ctx.tables.payment_webhook_inbox
        async with sim_orders.app.state.sessionmaker() as session:
            outcome = await session.scalar(
                select(inbox.c.outcome).where(inbox.c.event_id == payload["id"])
            )
        assert outcome == "invalid"
        after = await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=auth("admin"))
        assert after.json()["status"] == payment["status"]
        assert after.json()["amount_captured"] == payment["amount_captured"]
        # A redelivery of the same event is a duplicate, not a second attempt.
        again = await sim_orders.client.post(WEBHOOK, content=body, headers=headers)
        assert again.json()["status"] == "duplicate"

    async def test_an_object_id_over_255_characters_is_recorded_without_it(
        self, sim_orders: PaymentsApp
    ) -> None:
        payload = event("customer.created", {"id": "cus_" + "y" * 400, "object": "customer"})
        body, headers = signed(payload, SIMULATED_WEBHOOK_SECRET)
        response = await sim_orders.client.post(WEBHOOK, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ignored"
        assert json.loads(body)["id"] == payload["id"]


class Watching:
    """The simulated provider, noting how many of the service's pooled connections are
    checked out whenever it is asked for a payment's current state."""

    def __init__(self, real: Any, pool: Any) -> None:
        self._real = real
        self._pool = pool
        self.held_during_reads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def retrieve_payment(self, payment_id: str) -> Any:
        self.held_during_reads.append(self._pool.checkedout())
        return await self._real.retrieve_payment(payment_id)


async def test_an_event_that_needs_the_providers_view_holds_no_connection_while_reading_it(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    from dataclasses import replace

    ctx = sim_orders.ctx
    started = await sim_orders.post(
        "/v1/payments",
        {
            "reference": new_reference(),
            "merchant_id": new_merchant(),
            "amount": 1000,
            "currency": "CNY",
            "payment_method": "pm_card_succeedLater",
        },
        auth("customer"),
    )
    payment = started.json()
    assert payment["status"] == "processing"
    intent = payment["provider_payment_id"]
    # At the provider the payment succeeds and is refunded; we hear of the refund first.
    await ctx.provider.settle_due()  # type: ignore[attr-defined]
    refund = await ctx.provider.create_refund(
        intent, amount=400, reason=None, metadata={}, idempotency_key=uuid.uuid4().hex
    )
    watching = Watching(ctx.provider, sim_orders.app.state.engine.pool)
    sim_orders.app.state.payments = replace(ctx, provider=watching)
    refund_event = event(
        "refund.created",
        {
            "id": refund.id,
            "object": "refund",
            "amount": 400,
            "currency": "cny",
            "payment_intent": intent,
            "status": "succeeded",
            "metadata": {},
        },
    )
    body, headers = signed(refund_event, SIMULATED_WEBHOOK_SECRET)

    answered = await sim_orders.client.post(WEBHOOK, content=body, headers=headers)

    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "applied"
    assert watching.held_during_reads == [0]
    after = await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=auth("admin"))
    assert after.json()["status"] == "succeeded"
    assert after.json()["amount_refunded"] == 400
