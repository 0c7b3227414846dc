"""POST /webhooks/stripe with the Stripe provider: payments made through the real SDK on
localstripe, events built from localstripe's own objects and signed with the Stripe scheme."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import stripe
from sqlalchemy import select

from tests.conftest import TokenFactory
from tests.factories import paid_payment
from tests.helpers import serve
from tests.shared.payments.support import (
    STRIPE_WEBHOOK_SECRET,
    PaymentsApp,
    event,
    payments_app,
    payments_env,
    signed,
)

WEBHOOK = "/webhooks/stripe"


async def intent_json(sdk: stripe.StripeClient, intent_id: str) -> dict[str, Any]:
    intent = await sdk.v1.payment_intents.retrieve_async(intent_id, {"expand": ["latest_charge"]})
    return intent.to_dict()


async def send(
    app: PaymentsApp, payload: dict[str, Any], *, secret: str = STRIPE_WEBHOOK_SECRET, **kw: Any
) -> httpx.Response:
    body, headers = signed(payload, secret, **kw)
    return await app.client.post(WEBHOOK, content=body, headers=headers)


async def state(app: PaymentsApp, payment_id: str, headers: dict[str, str]) -> dict[str, Any]:
    return dict((await app.client.get(f"/v1/payments/{payment_id}", headers=headers)).json())


class TestSignature:
    async def test_a_valid_signature_is_accepted_and_recorded(
        self, stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
    ) -> None:
        payment, _ = await paid_payment(stripe_orders, auth)
        payload = event(
            "payment_intent.succeeded",
            await intent_json(localstripe_sdk, payment["provider_payment_id"]),
        )
        response = await send(stripe_orders, payload)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "event_id": payload["id"],
            "event_type": "payment_intent.succeeded",
            "status": "applied",
        }
        assert await stripe_orders.count("payment_webhook_inbox", event_id=payload["id"]) == 1

    async def test_wrong_secret_tampered_body_stale_or_missing_signature_are_refused(
        self, stripe_orders: PaymentsApp
    ) -> None:
        payload = event("payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"})
        body, headers = signed(payload, STRIPE_WEBHOOK_SECRET)
        tampered = body.replace(b"pi_x", b"pi_y")
        refusals = [
            await send(stripe_orders, payload, secret="whsec_someone_else"),
            await stripe_orders.client.post(WEBHOOK, content=tampered, headers=headers),
            await send(stripe_orders, payload, timestamp=int(time.time()) - 3600),
            await stripe_orders.client.post(
                WEBHOOK, content=body, headers={"content-type": "application/json"}
            ),
            await stripe_orders.client.post(
                WEBHOOK, content=body, headers={"Stripe-Signature": "garbage"}
            ),
        ]
        for response in refusals:
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "webhook_signature_invalid"
        assert await stripe_orders.count("payment_webhook_inbox", event_id=payload["id"]) == 0

    async def test_an_empty_secret_refuses_everything(
        self,
        service_env: Callable[..., dict[str, str]],
        localstripe_url: str,
    ) -> None:
        env = service_env(
            "orders",
            **payments_env("stripe", STRIPE_API_BASE=localstripe_url, STRIPE_WEBHOOK_SECRET=""),
        )
        async with payments_app("orders", env) as app:
            payload = event("customer.created", {"id": "cus_x", "object": "customer"})
            for secret in ("", " ", "whsec_anything"):
                body = json.dumps(payload)
                header = stripe.WebhookSignature.generate_signature_header(body, secret)
                response = await app.client.post(
                    WEBHOOK, content=body, headers={"Stripe-Signature": header}
                )
                assert response.status_code == 400
                assert response.json()["code"] == "webhook_signature_invalid"

    async def test_a_signed_body_that_is_not_an_event_is_refused(
        self, stripe_orders: PaymentsApp
    ) -> None:
        for payload in ({"object": "payment_intent", "id": "pi_1"}, {"object": "event", "id": 5}):
            response = await send(stripe_orders, payload)
            assert response.status_code == 400
            assert response.json()["code"] == "webhook_payload_invalid"


class TestDeliveries:
    async def test_a_replayed_event_has_no_second_effect(
        self, stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
    ) -> None:
        payment, staff = await paid_payment(stripe_orders, auth)
        # A refund made in the Stripe dashboard: we learn of it from its event only.
        refund = await localstripe_sdk.v1.refunds.create_async(
            {"payment_intent": payment["provider_payment_id"], "amount": 300}
        )
        payload = event("refund.created", refund.to_dict())
        first = await send(stripe_orders, payload)
        replay = await send(stripe_orders, payload)
        assert first.json()["status"] == "applied"
        assert replay.status_code == 200
        assert replay.json()["status"] == "duplicate"
        current = await state(stripe_orders, payment["id"], staff)
        assert (current["amount_refunded"], current["net_paid"]) == (300, 700)
        assert [(r["amount"], r["requested_by"]) for r in current["refunds"]] == [(300, "provider")]
        events = await stripe_orders.event_types(payment["id"])
        assert events == ["payment.succeeded", "payment.refunded"]

        # The same refund again under a new event id (Stripe's refund.updated) changes nothing.
        updated = await send(stripe_orders, event("refund.updated", refund.to_dict()))
        assert updated.json()["status"] == "applied"
        assert (await state(stripe_orders, payment["id"], staff))["amount_refunded"] == 300

    async def test_out_of_order_events_cannot_move_a_payment_back(
        self, stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
    ) -> None:
        payment, staff = await paid_payment(stripe_orders, auth, capture_method="manual")
        intent_id = payment["provider_payment_id"]
        authorized = await intent_json(localstripe_sdk, intent_id)
        assert authorized["status"] == "requires_capture"
        # Captured in the dashboard, behind our back.
        await localstripe_sdk.v1.payment_intents.capture_async(intent_id)
        captured = await intent_json(localstripe_sdk, intent_id)
        now = int(time.time())

        newer = await send(stripe_orders, event("payment_intent.succeeded", captured, created=now))
        assert newer.json()["status"] == "applied"
        older = await send(
            stripe_orders,
            event("payment_intent.amount_capturable_updated", authorized, created=now - 10),
        )
        assert older.status_code == 200
        assert older.json()["status"] == "stale"
        same_second = await send(
            stripe_orders,
            event("payment_intent.amount_capturable_updated", authorized, created=now),
        )
        assert same_second.status_code == 200

        current = await state(stripe_orders, payment["id"], staff)
        assert (current["status"], current["amount_captured"]) == ("succeeded", 1000)
        assert (await stripe_orders.event_types(payment["id"])).count("payment.succeeded") == 1

    async def test_a_refund_event_before_the_payment_succeeded_catches_up(
        self, stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
    ) -> None:
        payment, staff = await paid_payment(stripe_orders, auth, capture_method="manual")
        intent_id = payment["provider_payment_id"]
        await localstripe_sdk.v1.payment_intents.capture_async(
            intent_id, {"amount_to_capture": 800}
        )
        refund = await localstripe_sdk.v1.refunds.create_async(
            {"payment_intent": intent_id, "amount": 200}
        )
        # The refund's event arrives first; the capture's arrives after it.
        early = await send(stripe_orders, event("refund.created", refund.to_dict()))
        assert early.json()["status"] == "applied"
        current = await state(stripe_orders, payment["id"], staff)
        assert (current["status"], current["amount_captured"], current["amount_refunded"]) == (
            "succeeded",
            800,
            200,
        )
        late = await send(
            stripe_orders,
            event("payment_intent.succeeded", await intent_json(localstripe_sdk, intent_id)),
        )
        assert late.status_code == 200
        again = await state(stripe_orders, payment["id"], staff)
        assert (again["amount_captured"], again["amount_refunded"], again["net_paid"]) == (
            800,
            200,
            600,
        )
        assert len(again["refunds"]) == 1
        assert (await stripe_orders.event_types(payment["id"])) == [
            "payment.succeeded",
            "payment.refunded",
        ]

    async def test_events_about_unknown_objects_are_accepted_without_effect(
        self, stripe_orders: PaymentsApp, localstripe_sdk: stripe.StripeClient
    ) -> None:
        stranger = await localstripe_sdk.v1.payment_intents.create_async(
            {"amount": 500, "currency": "cny", "payment_method_types": ["card"]}  # type: ignore[typeddict-unknown-key]
        )
        before = await stripe_orders.count("payment")
        for payload in (
            event("payment_intent.succeeded", stranger.to_dict()),
            event(
                "refund.created",
                {"id": "re_x", "object": "refund", "amount": 5, "payment_intent": "pi_nope"},
            ),
            event(
                "charge.dispute.created",
                {"id": "dp_x", "object": "dispute", "charge": "ch_nope", "amount": 5},
            ),
            event(
                "setup_intent.succeeded",
                {"id": "seti_nope", "object": "setup_intent", "status": "succeeded"},
            ),
        ):
            response = await send(stripe_orders, payload)
            assert response.status_code == 200
            assert response.json()["status"] == "unknown_object"
        ignored = await send(
            stripe_orders, event("customer.created", {"id": "cus_x", "object": "customer"})
        )
        assert ignored.json()["status"] == "ignored"
        assert await stripe_orders.count("payment") == before

    async def test_a_dispute_is_recorded_once(
        self, stripe_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        payment, staff = await paid_payment(stripe_orders, auth)
        dispute = {
            "id": f"dp_{uuid.uuid4().hex[:12]}",
            "object": "dispute",
            "amount": 1000,
            "currency": "cny",
            "charge": "ch_unused",
            "payment_intent": payment["provider_payment_id"],
            "reason": "fraudulent",
            "status": "needs_response",
        }
        opened = await send(stripe_orders, event("charge.dispute.created", dispute, created=100))
        lost = await send(
            stripe_orders,
            event("charge.dispute.closed", {**dispute, "status": "lost"}, created=200),
        )
        late = await send(stripe_orders, event("charge.dispute.updated", dispute, created=150))
        assert [r.json()["status"] for r in (opened, lost, late)] == ["applied", "applied", "stale"]
        current = await state(stripe_orders, payment["id"], staff)
        assert (current["dispute_status"], current["dispute_amount"]) == ("lost", 1000)
        events = await stripe_orders.event_types(payment["id"])
        assert events == ["payment.succeeded", "payment.disputed", "payment.dispute_closed"]


async def test_localstripe_delivers_its_own_signed_events(
    stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_url: str
) -> None:
    """localstripe itself POSTs payment_intent.succeeded to our webhook over HTTP, signed
    with the endpoint secret (it waits a second before sending)."""
    async with serve(stripe_orders.app, lifespan="off") as base_url:
        async with httpx.AsyncClient() as http:
            registered = await http.post(
                f"{localstripe_url}/_config/webhooks/{uuid.uuid4().hex[:8]}",
                data={"url": f"{base_url}{WEBHOOK}", "secret": STRIPE_WEBHOOK_SECRET},
            )
            assert registered.status_code == 200
        payment, _ = await paid_payment(stripe_orders, auth)
        intent_id = payment["provider_payment_id"]
        for _ in range(100):
            if await stripe_orders.count("payment_webhook_inbox", object_id=intent_id):
                break
            await asyncio.sleep(0.05)
        inbox = stripe_orders.ctx.tables.payment_webhook_inbox
        async with stripe_orders.app.state.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(inbox.c.event_type, inbox.c.outcome).where(
                        inbox.c.object_id == intent_id
                    )
                )
            ).all()
        assert ("payment_intent.succeeded", "applied") in [tuple(r) for r in rows]
