"""The Stripe provider through the real SDK, over HTTP, against localstripe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import stripe

from shared.payments import (
    PaymentRequest,
    ProviderNotFound,
    ProviderPayment,
)
from shared.payments._stripe import StripeHTTPClient, StripeProvider
from tests.shared.payments.support import (
    STRIPE_TEST_KEY,
    STRIPE_WEBHOOK_SECRET,
    card_needing_3ds,
)


@pytest.fixture
async def provider(localstripe_url: str) -> AsyncIterator[StripeProvider]:
    provider = StripeProvider(
        api_key=STRIPE_TEST_KEY,
        webhook_secret=STRIPE_WEBHOOK_SECRET,
        api_base=localstripe_url,
        max_network_retries=0,
    )
    yield provider
    await provider.aclose()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def request(
    amount: int = 1000,
    *,
    payment_method: str | None = None,
    capture: str = "automatic",
    customer: str | None = None,
) -> PaymentRequest:
    return PaymentRequest(
        amount=amount,
        currency="CNY",
        method="card",
        capture_method="manual" if capture == "manual" else "automatic",
        metadata={"qunbuy_payment_id": str(uuid.uuid4()), "reference": "order:test"},
        customer=customer,
        payment_method=payment_method,
    )


async def paid(
    provider: StripeProvider, amount: int = 1000, *, capture: str = "automatic"
) -> ProviderPayment:
    created = await provider.create_payment(
        request(amount, payment_method="pm_card_visa", capture=capture), idempotency_key=key()
    )
    return await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())


class TestCreateAndConfirm:
    async def test_create_without_payment_method_waits_for_the_client(
        self, provider: StripeProvider
    ) -> None:
        created = await provider.create_payment(request(2500), idempotency_key=key())
        assert created.id.startswith("pi_")
        assert created.status == "requires_payment_method"
        assert (created.amount, created.currency) == (2500, "CNY")
        assert created.client_secret
        assert created.client_secret.startswith(created.id)
        assert created.metadata["reference"] == "order:test"
        assert created.amount_captured == 0

    async def test_confirm_with_a_card_succeeds(self, provider: StripeProvider) -> None:
        created = await provider.create_payment(request(1800), idempotency_key=key())
        confirmed = await provider.confirm_payment(
            created.id, payment_method="pm_card_visa", idempotency_key=key()
        )
        assert confirmed.status == "succeeded"
        assert confirmed.amount_captured == 1800
        assert confirmed.amount_refunded == 0
        assert confirmed.charge_id
        assert confirmed.charge_id.startswith("ch_")
        assert confirmed.failure_code is None

    async def test_a_declining_card_returns_the_failure_instead_of_raising(
        self, provider: StripeProvider
    ) -> None:
        # localstripe declines charges on 4000000000000341 (pm_card_chargeCustomerFail).
        created = await provider.create_payment(
            request(700, payment_method="pm_card_chargeCustomerFail"), idempotency_key=key()
        )
        declined = await provider.confirm_payment(
            created.id, payment_method=None, idempotency_key=key()
        )
        assert declined.id == created.id
        assert declined.status == "requires_payment_method"
        assert declined.failure_code == "card_declined"
        assert declined.failure_message == "Your card was declined."
        assert declined.amount_captured == 0

    async def test_a_card_needing_3d_secure_requires_action(
        self, provider: StripeProvider, localstripe_sdk: stripe.StripeClient
    ) -> None:
        card = await card_needing_3ds(localstripe_sdk)
        created = await provider.create_payment(
            request(900, payment_method=card), idempotency_key=key()
        )
        pending = await provider.confirm_payment(
            created.id, payment_method=None, idempotency_key=key()
        )
        assert pending.status == "requires_action"
        assert pending.next_action is not None
        assert pending.next_action["type"] == "use_stripe_sdk"

    async def test_retrieving_an_unknown_payment_is_not_found(
        self, provider: StripeProvider
    ) -> None:
        with pytest.raises(ProviderNotFound):
            await provider.retrieve_payment("pi_doesnotexist")


class TestCaptureAndCancel:
    async def test_full_capture(self, provider: StripeProvider) -> None:
        held = await paid(provider, 1200, capture="manual")
        assert held.status == "requires_capture"
        assert held.amount_captured == 0
        captured = await provider.capture_payment(held.id, amount=None, idempotency_key=key())
        assert captured.status == "succeeded"
        assert (captured.amount_captured, captured.amount_refunded) == (1200, 0)

    async def test_partial_capture_releases_the_rest_and_is_not_a_refund(
        self, provider: StripeProvider
    ) -> None:
        held = await paid(provider, 1000, capture="manual")
        captured = await provider.capture_payment(held.id, amount=600, idempotency_key=key())
        assert captured.status == "succeeded"
        assert (captured.amount_captured, captured.amount_refunded) == (600, 0)
        again = await provider.retrieve_payment(held.id)
        assert (again.amount_captured, again.amount_refunded) == (600, 0)
        assert again.refunds == ()

    async def test_cancel_an_authorization(self, provider: StripeProvider) -> None:
        held = await paid(provider, 500, capture="manual")
        canceled = await provider.cancel_payment(held.id, idempotency_key=key())
        assert canceled.status == "canceled"
        assert (await provider.retrieve_payment(held.id)).status == "canceled"


class TestRefunds:
    async def test_partial_then_full_refund(self, provider: StripeProvider) -> None:
        payment = await paid(provider, 1000)
        first = await provider.create_refund(
            payment.id,
            amount=300,
            reason="requested_by_customer",
            metadata={"n": "1"},
            idempotency_key=key(),
        )
        assert first.id.startswith("re_")
        assert (first.amount, first.status, first.payment_id) == (300, "succeeded", payment.id)
        second = await provider.create_refund(
            payment.id, amount=700, reason=None, metadata={"n": "2"}, idempotency_key=key()
        )
        assert second.amount == 700
        state = await provider.retrieve_payment(payment.id)
        assert state.amount_captured == 1000
        assert state.amount_refunded == 1000
        assert state.refunds is not None
        assert sorted(r.amount for r in state.refunds) == [300, 700]
        assert {r.metadata.get("n") for r in state.refunds} == {"1", "2"}


class TestSavedCards:
    async def test_setup_intent_then_off_session_charge(self, provider: StripeProvider) -> None:
        customer = await provider.ensure_customer(
            user_id=f"user_{uuid.uuid4().hex[:8]}", metadata={}, idempotency_key=key()
        )
        assert customer.startswith("cus_")
        setup = await provider.create_setup(
            customer=customer,
            payment_method="pm_card_visa",
            metadata={"a": "b"},
            idempotency_key=key(),
        )
        assert setup.status == "succeeded"
        assert setup.customer == customer
        assert setup.payment_method
        assert setup.payment_method.startswith("pm_")
        charged = await provider.charge_off_session(
            request(4200, customer=customer, payment_method=setup.payment_method),
            idempotency_key=key(),
        )
        assert charged.status == "succeeded"
        assert charged.amount_captured == 4200
        assert charged.customer == customer

    async def test_off_session_decline_is_found_through_the_charge(
        self, provider: StripeProvider
    ) -> None:
        customer = await provider.ensure_customer(
            user_id=f"user_{uuid.uuid4().hex[:8]}", metadata={}, idempotency_key=key()
        )
        setup = await provider.create_setup(
            customer=customer,
            payment_method="pm_card_chargeCustomerFail",
            metadata={},
            idempotency_key=key(),
        )
        assert setup.status == "succeeded"  # saving works, charging does not
        declined = await provider.charge_off_session(
            request(4200, customer=customer, payment_method=setup.payment_method),
            idempotency_key=key(),
        )
        assert declined.id.startswith("pi_")
        assert declined.status == "requires_payment_method"
        assert declined.failure_code == "card_declined"

    async def test_setup_with_a_card_that_cannot_be_saved_reports_why(
        self, provider: StripeProvider
    ) -> None:
        customer = await provider.ensure_customer(
            user_id=f"user_{uuid.uuid4().hex[:8]}", metadata={}, idempotency_key=key()
        )
        setup = await provider.create_setup(
            customer=customer,
            payment_method="pm_card_visa_chargeDeclined",
            metadata={},
            idempotency_key=key(),
        )
        assert setup.status != "succeeded"
        assert setup.failure_code == "card_declined"


class RecordingClient(StripeHTTPClient):
    """The SDK's own httpx client, remembering the headers of what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, Mapping[str, str]]] = []

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> Any:
        self.sent.append((method, url, dict(headers)))
        return await super().request_async(method, url, headers, post_data)


async def test_every_money_moving_call_carries_the_given_idempotency_key(
    localstripe_url: str,
) -> None:
    # localstripe does not replay idempotent requests (Stripe does): what is checked here is
    # that each call sends our deterministic key, so Stripe can.
    http = RecordingClient()
    provider = StripeProvider(
        api_key=STRIPE_TEST_KEY,
        webhook_secret=STRIPE_WEBHOOK_SECRET,
        api_base=localstripe_url,
        max_network_retries=0,
        http_client=http,
    )
    base = f"qunbuy:test:payment:{uuid.uuid4()}"
    created = await provider.create_payment(
        request(1000, payment_method="pm_card_visa", capture="manual"),
        idempotency_key=f"{base}:create",
    )
    await provider.confirm_payment(
        created.id, payment_method=None, idempotency_key=f"{base}:confirm"
    )
    await provider.capture_payment(created.id, amount=800, idempotency_key=f"{base}:capture")
    await provider.create_refund(
        created.id, amount=100, reason=None, metadata={}, idempotency_key=f"{base}:refund"
    )
    posts = [(url, headers) for method, url, headers in http.sent if method == "post"]
    keys = [headers.get("Idempotency-Key") for _, headers in posts]
    assert keys == [f"{base}:create", f"{base}:confirm", f"{base}:capture", f"{base}:refund"]
    assert all(h.get("Stripe-Version") == "2025-03-31.basil" for _, h in posts)
    await http.aclose()
