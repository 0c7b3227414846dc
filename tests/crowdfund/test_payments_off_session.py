"""Crowdfund charges saved cards at a campaign's deadline, the customer absent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.payments import (
    PaymentAmountAboveMaximum,
    PaymentRow,
    PaymentSetupNotFound,
    PaymentSetupNotUsable,
    SetupRow,
    charge_off_session,
    create_setup,
)
from tests.shared.payments.support import PaymentsApp, signed


async def save_card(app: PaymentsApp, customer: str, token: str) -> SetupRow:
    return await create_setup(
        app.ctx, setup_id=uuid.uuid4(), customer_id=customer, payment_method=token
    )


async def charge(app: PaymentsApp, setup: SetupRow, reference: str, **kw: Any) -> PaymentRow:
    return await charge_off_session(
        app.ctx,
        reference=reference,
        merchant_id=kw.pop("merchant_id", "m_campaign"),
        customer_id=kw.pop("customer_id", setup.customer_id),
        setup_id=setup.id,
        amount=kw.pop("amount", 8800),
        currency="CNY",
        **kw,
    )


def user() -> str:
    return f"backer_{uuid.uuid4().hex[:10]}"


class TestSimulated:
    async def test_the_deadline_job_charges_once_however_often_it_runs(
        self, sim_crowdfund: PaymentsApp
    ) -> None:
        setup = await save_card(sim_crowdfund, user(), "pm_card_visa")
        assert setup.status == "succeeded"
        reference = f"pledge:{uuid.uuid4().hex[:12]}"
        first = await charge(sim_crowdfund, setup, reference)
        assert (first.status, first.off_session, first.amount_captured) == ("succeeded", True, 8800)
        second = await charge(sim_crowdfund, setup, reference)
        assert second.id == first.id
        assert len(await sim_crowdfund.provider_intents(reference=reference)) == 1
        await sim_crowdfund.tick()
        assert await sim_crowdfund.event_types(first.id) == ["payment.succeeded"]

    async def test_a_card_that_declines_at_the_deadline(self, sim_crowdfund: PaymentsApp) -> None:
        setup = await save_card(sim_crowdfund, user(), "pm_card_chargeCustomerFail")
        assert setup.status == "succeeded"  # it saved fine
        declined = await charge(sim_crowdfund, setup, f"pledge:{uuid.uuid4().hex[:12]}")
        assert (declined.status, declined.failure_code) == (
            "requires_payment_method",
            "generic_decline",
        )
        assert declined.amount_captured == 0
        # The next attempt is a new payment (after the backer updated their card).
        retried = await charge(sim_crowdfund, setup, declined.reference, attempt=2)
        assert retried.id != declined.id

    async def test_a_card_needing_authentication_cannot_be_charged_later(
        self, sim_crowdfund: PaymentsApp
    ) -> None:
        needs_action = await save_card(sim_crowdfund, user(), "pm_card_authenticationRequired")
        assert needs_action.status == "requires_action"
        with pytest.raises(PaymentSetupNotUsable):
            await charge(sim_crowdfund, needs_action, "pledge:x")

    async def test_a_saved_card_is_only_its_owners(self, sim_crowdfund: PaymentsApp) -> None:
        setup = await save_card(sim_crowdfund, user(), "pm_card_visa")
        with pytest.raises(PaymentSetupNotFound):
            await charge(sim_crowdfund, setup, "pledge:y", customer_id="someone_else")
        with pytest.raises(PaymentAmountAboveMaximum):
            await charge(sim_crowdfund, setup, "pledge:z", amount=5_000_001)

    async def test_crowdfund_has_its_own_webhook(self, sim_crowdfund: PaymentsApp) -> None:
        body, headers = signed({"object": "event"}, "whsec_wrong")
        response = await sim_crowdfund.client.post(
            "/webhooks/stripe", content=body, headers=headers
        )
        assert response.status_code == 400
        assert response.json()["code"] == "webhook_signature_invalid"
        # Crowdfund takes payments through its pledges, not through /v1/payments.
        assert (await sim_crowdfund.client.post("/v1/payments", json={})).status_code == 404


class TestStripe:
    async def test_setup_intent_then_off_session_charge(
        self, stripe_crowdfund: PaymentsApp
    ) -> None:
        setup = await save_card(stripe_crowdfund, user(), "pm_card_visa")
        assert setup.provider_setup_id.startswith("seti_")
        assert setup.provider_customer_id.startswith("cus_")
        paid = await charge(stripe_crowdfund, setup, f"pledge:{uuid.uuid4().hex[:12]}")
        assert (paid.status, paid.amount_captured) == ("succeeded", 8800)
        assert paid.provider_payment_id is not None
        assert paid.provider_payment_id.startswith("pi_")

    async def test_off_session_decline(self, stripe_crowdfund: PaymentsApp) -> None:
        setup = await save_card(stripe_crowdfund, user(), "pm_card_chargeCustomerFail")
        declined = await charge(stripe_crowdfund, setup, f"pledge:{uuid.uuid4().hex[:12]}")
        assert (declined.status, declined.failure_code) == (
            "requires_payment_method",
            "card_declined",
        )
        assert declined.provider_payment_id is not None
