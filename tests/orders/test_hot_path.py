"""What placing an order costs the service's database, statement by statement, on real
PostgreSQL (docs/orders.md, "The hot path"): each step that is one statement commits on its
own, and the payment's state and history come out the same either way."""

from __future__ import annotations

import uuid

from shared.payments import PaymentRequest, ProviderPayment, record_payment
from shared.payments._state import create_at_provider
from tests.conftest import TokenFactory
from tests.orders.presale_support import open_campaign, order
from tests.orders.statement_support import PLAIN, history, statements
from tests.shared.payments.support import PaymentsApp


async def test_a_payment_left_to_the_customer_is_tied_by_one_statement_of_its_own(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """A WeChat Pay order of a campaign new to the process: the claim, a read of the
    campaign's terms, one statement (reservation, order, payment intent: the plain path),
    the provider's answer tied in one statement and the key's completion, each committing
    alone: no BEGIN and COMMIT round trips around a single statement. The next order does
    not read the terms again."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=5, min_quantity=1)
    with statements(sim_orders) as seen:
        placed = await order(
            sim_orders, auth("customer"), campaign_id, method="wechat_pay", payment_method=None
        )
    assert placed.status_code == 201, placed.text
    claim = ("INSERT INTO idempotency_key (scope, key,", True)
    read = ("SELECT presale_campaign.id, presale_camp", True)
    tie = ("WITH written AS (UPDATE payment SET prov", True)
    completion = ("UPDATE idempotency_key SET status=$1::VA", True)
    assert seen == [claim, read, PLAIN, tie, completion], seen
    with statements(sim_orders) as seen:
        plain = await order(
            sim_orders, auth("customer"), campaign_id, method="wechat_pay", payment_method=None
        )
    assert plain.status_code == 201, plain.text
    assert seen == [claim, PLAIN, tie, completion], seen
    for answer in (placed, plain):
        payment = answer.json()["payment"]
        assert payment["status"] == "requires_payment_method"
        assert payment["client_secret"]
        assert await history(sim_orders, payment["id"]) == [
            (None, "creating"),
            ("creating", "requires_payment_method"),
        ]


async def test_a_card_confirmed_at_once_is_tied_and_applied_in_one_transaction(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """A card given with the order: its creation answer (waiting for confirmation) is not
    what the tie writes, so tie and snapshot go together in a transaction, as before, and
    the confirmation follows; the order is paid in the same request."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=5, min_quantity=1)
    with statements(sim_orders) as seen:
        placed = await order(sim_orders, auth("customer"), campaign_id)
    assert placed.status_code == 201, placed.text
    # A saved method's owner is checked: the full path, one transaction.
    assert seen[1:4] == [
        ("WITH campaign AS (UPDATE presale_campaig", False),
        ("INSERT INTO customer_order (id, campaign", False),
        ("SELECT DISTINCT payment_setup.customer_i", False),
    ], seen
    tie = [alone for text, alone in seen if text == "WITH written AS (UPDATE payment SET prov"]
    assert tie[:1] == [False], seen  # the tie, then the snapshot in its transaction
    body = placed.json()
    assert body["status"] == "deposit_paid"
    assert body["payment"]["status"] == "succeeded"
    assert await history(sim_orders, body["payment"]["id"]) == [
        (None, "creating"),
        ("creating", "requires_payment_method"),
        ("requires_payment_method", "requires_confirmation"),
        ("requires_confirmation", "succeeded"),
    ]


async def test_a_payment_tied_already_is_applied_under_its_lock_not_tied_twice(
    sim_orders: PaymentsApp,
) -> None:
    """The provider's answer recorded twice (a retry, or a webhook, tied it first): the
    second tie finds nothing untied and applies the answer in a transaction under the row's
    lock: the same payment, one history row for the tie."""
    ctx = sim_orders.ctx
    payment_id = uuid.uuid4()
    async with ctx.transaction() as session:
        recorded = await record_payment(
            session,
            ctx,
            payment_id=payment_id,
            reference=f"test:{payment_id}",
            merchant_id="m_hot_path",
            customer_id="c_hot_path",
            amount=1000,
            currency="CNY",
            method="wechat_pay",
        )
    answer = await ctx.provider.create_payment(
        PaymentRequest(
            amount=recorded.amount,
            currency=recorded.currency,
            method="wechat_pay",
            capture_method="automatic",
            metadata={},
        ),
        idempotency_key=f"test:{payment_id}",
    )

    async def answered() -> ProviderPayment:
        return answer

    with statements(sim_orders) as seen:
        first = await create_at_provider(ctx, payment_id, answered())
    assert [alone for _, alone in seen] == [True]
    with statements(sim_orders) as seen:
        second = await create_at_provider(ctx, payment_id, answered())
    # The tie alone, then in a transaction the tie again (nothing untied) and the locked read.
    assert [alone for _, alone in seen] == [True, False, False], seen
    assert second == first
    assert (first.status, first.provider_payment_id) == ("requires_payment_method", answer.id)
    assert await history(sim_orders, str(payment_id)) == [
        (None, "creating"),
        ("creating", "requires_payment_method"),
    ]
