"""A domain's payment hook runs once per change, in the transaction that records it, whatever
brought the news (the API's answer, a webhook from the simulated provider)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import platform
from shared.payments import PaymentChange
from tests.conftest import TokenFactory
from tests.factories import new_merchant, payment_request
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
    sim_orders.ctx.hooks.register("order:", orders)
    sim_orders.ctx.hooks.register("pledge:", pledges)
    reference = f"order:{uuid.uuid4().hex[:10]}"
    payer = auth("customer")
    key = uuid.uuid4().hex

    request = payment_request(reference=reference)
    paid = await sim_orders.post("/v1/payments", request, payer, key=key)
    replay = await sim_orders.post("/v1/payments", request, payer, key=key)

    assert paid.status_code == replay.status_code == 201
    assert orders.calls == [("succeeded", reference)]
    assert pledges.calls == []
    assert await hook_rows(sim_orders, paid.json()["id"]) == ["payment.succeeded"]


async def test_the_hook_runs_for_news_that_a_webhook_brings(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    hook = Recorder()
    sim_orders.ctx.hooks.register("order:", hook)
    reference = f"order:{uuid.uuid4().hex[:10]}"
    started = await sim_orders.post(
        "/v1/payments",
        payment_request(reference=reference, payment_method="pm_card_succeedLater"),
        auth("customer"),
    )
    assert started.json()["status"] == "processing"
    assert hook.calls == []

    await sim_orders.tick()  # the provider settles; its webhook reaches the service

    assert hook.calls == [("succeeded", reference)]
    assert await hook_rows(sim_orders, started.json()["id"]) == ["payment.succeeded"]


async def test_refunds_and_declines_reach_the_hook(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    hook = Recorder()
    sim_orders.ctx.hooks.register("order:", hook)
    declined_ref = f"order:{uuid.uuid4().hex[:10]}"
    declined = await sim_orders.post(
        "/v1/payments",
        payment_request(reference=declined_ref, payment_method="pm_card_chargeDeclined"),
        auth("customer"),
    )
    assert declined.status_code == 402
    merchant = new_merchant()
    paid_ref = f"order:{uuid.uuid4().hex[:10]}"
    paid = await sim_orders.post(
        "/v1/payments", payment_request(reference=paid_ref, merchant_id=merchant), auth("customer")
    )
    refund = await sim_orders.post(
        f"/v1/payments/{paid.json()['id']}/refunds",
        {"amount": 500},
        auth("staff", merchant_id=merchant),
    )
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
    sim_orders.ctx.hooks.register("order:", hook)
    reference = f"order:{uuid.uuid4().hex[:10]}"
    payer = auth("customer")
    key = uuid.uuid4().hex

    request = payment_request(reference=reference)
    failed = await sim_orders.post("/v1/payments", request, payer, key=key)
    assert failed.status_code == 500
    p = sim_orders.ctx.tables.payment
    async with sim_orders.app.state.sessionmaker() as session:
        status = await session.scalar(select(p.c.status).where(p.c.reference == reference))
        succeeded = await session.scalar(
            select(func.count()).where(p.c.reference == reference, p.c.status == "succeeded")
        )
    assert status != "succeeded"
    assert succeeded == 0

    hook.fail = False
    retried = await sim_orders.post("/v1/payments", request, payer, key=key)
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "succeeded"
    assert await hook_rows(sim_orders, retried.json()["id"]) == ["payment.succeeded"]
    intents = await sim_orders.provider_intents(reference=reference)
    assert len(intents) == 1  # the retry resumed the same payment: charged once
