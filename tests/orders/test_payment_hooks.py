"""A domain's payment hook runs once per change, in the transaction that records it, whatever
brought the news (the API's answer, a webhook from the simulated provider)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import platform
from shared.payments import PaymentChange, PaymentRow, create_payment, new_payment_id
from tests.conftest import TokenFactory
from tests.factories import new_merchant
from tests.shared.payments.support import PaymentsApp


class Recorder:
    """A hook that writes a row in the caller's transaction, so that the row exists exactly
    when the payment's change was committed."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, session: AsyncSession, change: PaymentChange) -> None:
        self.calls.append((change.kind, change.payment.reference))
        await session.execute(
            insert(platform.inbox).values(
                source="hook",
                event_id=f"{change.payment.id}:{change.kind}:{uuid.uuid4().hex[:6]}",
                event_type=f"payment.{change.kind}",
            )
        )
        if self.fail:
            raise RuntimeError("the domain's own bug")


async def domain_payment(
    app: PaymentsApp, reference: str, *, payment_method: str = "pm_card_visa", key: str = ""
) -> PaymentRow:
    """A payment made the way a domain makes its own (the generic endpoint refuses references
    that a domain's hook owns): through the payment service, with a deterministic id."""
    return await create_payment(
        app.ctx,
        payment_id=new_payment_id("orders", "test", reference, key or uuid.uuid4().hex),
        reference=reference,
        merchant_id=new_merchant(),
        customer_id="user_hooks",
        amount=1000,
        currency="CNY",
        payment_method=payment_method,
    )


async def hook_rows(app: PaymentsApp, payment_id: str) -> list[str]:
    i = platform.inbox
    async with app.app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(i.c.event_type).where(i.c.source == "hook", i.c.event_id.like(f"{payment_id}:%"))
        )
        return sorted(rows)


async def test_the_hook_runs_once_when_the_api_answer_records_success(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    orders, pledges = Recorder(), Recorder()
    sim_orders.ctx.hooks.register("test:", orders)
    sim_orders.ctx.hooks.register("pledge:", pledges)
    reference = f"test:{uuid.uuid4().hex[:10]}"
    key = uuid.uuid4().hex

    paid = await domain_payment(sim_orders, reference, key=key)
    replay = await domain_payment(sim_orders, reference, key=key)

    assert paid.id == replay.id
    assert paid.status == replay.status == "succeeded"
    assert orders.calls == [("succeeded", reference)]
    assert pledges.calls == []
    assert await hook_rows(sim_orders, str(paid.id)) == ["payment.succeeded"]


async def test_the_hook_runs_for_news_that_a_webhook_brings(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    hook = Recorder()
    sim_orders.ctx.hooks.register("test:", hook)
    reference = f"test:{uuid.uuid4().hex[:10]}"
    started = await domain_payment(sim_orders, reference, payment_method="pm_card_succeedLater")
    assert started.status == "processing"
    assert hook.calls == []

    await sim_orders.tick()  # the provider settles; its webhook reaches the service

    assert hook.calls == [("succeeded", reference)]
    assert await hook_rows(sim_orders, str(started.id)) == ["payment.succeeded"]


async def test_refunds_and_declines_reach_the_hook(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    hook = Recorder()
    sim_orders.ctx.hooks.register("test:", hook)
    declined_ref = f"test:{uuid.uuid4().hex[:10]}"
    declined = await domain_payment(
        sim_orders, declined_ref, payment_method="pm_card_chargeDeclined"
    )
    assert declined.failure_code is not None
    paid_ref = f"test:{uuid.uuid4().hex[:10]}"
    paid = await domain_payment(sim_orders, paid_ref)
    staff = auth("staff", merchant_id=paid.merchant_id)
    refund = await sim_orders.post(f"/v1/payments/{paid.id}/refunds", {"amount": 500}, staff)
    assert refund.status_code == 201, refund.text

    assert hook.calls == [
        ("failed", declined_ref),
        ("succeeded", paid_ref),
        ("refunded", paid_ref),
    ]


async def test_a_failing_hook_rolls_the_change_back_and_the_retry_applies_it(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    hook = Recorder(fail=True)
    sim_orders.ctx.hooks.register("test:", hook)
    reference = f"test:{uuid.uuid4().hex[:10]}"
    key = uuid.uuid4().hex

    with pytest.raises(RuntimeError, match="the domain's own bug"):
        await domain_payment(sim_orders, reference, key=key)
    p = sim_orders.ctx.tables.payment
    async with sim_orders.app.state.sessionmaker() as session:
        status = await session.scalar(select(p.c.status).where(p.c.reference == reference))
        succeeded = await session.scalar(
            select(func.count()).where(p.c.reference == reference, p.c.status == "succeeded")
        )
    assert status != "succeeded"
    assert succeeded == 0

    hook.fail = False
    retried = await domain_payment(sim_orders, reference, key=key)
    assert retried.status == "succeeded"
    assert await hook_rows(sim_orders, str(retried.id)) == ["payment.succeeded"]
    intents = await sim_orders.provider_intents(reference=reference)
    assert len(intents) == 1  # the retry resumed the same payment: charged once
