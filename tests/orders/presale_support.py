"""Helpers of the pre-sale tests: campaign bodies, an opened campaign, running due jobs.

Times are arranged behind the API's back in one place only (:func:`make_due`): a close or a
window's end is brought to now instead of waiting for it, and the jobs then run exactly as
the worker runs them (``JobRunner.run_due``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from services.orders.models import customer_order, presale_campaign
from services.orders.orders.service import Orders
from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.shared.payments.support import PaymentsApp, new_merchant


def campaign_body(**overrides: Any) -> dict[str, Any]:
    """A campaign open now for a day: tiers 129/109/99 at 1/100/500 units, minimum 10,
    a ¥20 定金 per unit, two variants."""
    now = datetime.now(UTC)
    return {
        "title": "Linen shirt, batch 1",
        "description": "Made once 10 are ordered.",
        "image_urls": ["https://img.example/shirt.png"],
        "currency": "CNY",
        "variants": [{"sku": "S", "name": "Small"}, {"sku": "M", "name": "Medium"}],
        "price_tiers": [
            {"min_quantity": 1, "unit_price": 12900},
            {"min_quantity": 100, "unit_price": 10900},
            {"min_quantity": 500, "unit_price": 9900},
        ],
        "min_quantity": 10,
        "opens_at": (now - timedelta(minutes=1)).isoformat(),
        "closes_at": (now + timedelta(days=1)).isoformat(),
        "balance_window_hours": 72,
        "deposit": {"type": "deposit", "unit_deposit": 2000},
        **overrides,
    }


async def open_campaign(
    app: PaymentsApp, auth: TokenFactory, **overrides: Any
) -> tuple[str, dict[str, str]]:
    """A published, open campaign of a fresh merchant: its id and a staff header."""
    staff = auth("staff", merchant_id=new_merchant())
    created = await app.client.post("/v1/presales", json=campaign_body(**overrides), headers=staff)
    assert created.status_code == 201, created.text
    campaign_id = str(created.json()["id"])
    published = await app.client.post(f"/v1/presales/{campaign_id}/publish", headers=staff)
    assert published.status_code == 200, published.text
    assert published.json()["status"] == "open"
    return campaign_id, staff


async def order(
    app: PaymentsApp,
    buyer: dict[str, str],
    campaign_id: str,
    *,
    quantity: int = 1,
    sku: str = "S",
    key: str = "",
    **extra: Any,
) -> Any:
    body = {"sku": sku, "quantity": quantity, "payment_method": "pm_card_visa", **extra}
    return await app.post(f"/v1/presales/{campaign_id}/orders", body, buyer, key=key)


async def run_jobs(app: PaymentsApp) -> int:
    """Runs every due job and the expiry sweep the way the worker does; returns how much
    ran."""
    runner = JobRunner(
        sessionmaker=app.app.state.sessionmaker,
        tables=app.app.state.tables,
        handlers=app.app.state.job_handlers,
    )
    orders: Orders = app.app.state.orders
    total = 0
    while ran := await runner.run_due() + await orders.expire_due():
        total += ran
    return total


async def make_due(app: PaymentsApp, campaign_id: str, *, what: str) -> None:
    """Brings a campaign's close (``what="close"``) or balance deadline (``"balance"``) to
    now, with its scheduled job."""
    tables = app.app.state.tables
    past = datetime.now(UTC) - timedelta(seconds=2)
    async with app.app.state.sessionmaker() as session, session.begin():
        c = presale_campaign
        if what == "close":
            await session.execute(
                update(c).where(c.c.id == uuid.UUID(campaign_id)).values(closes_at=past)
            )
            kind = "presale.close"
        else:
            await session.execute(
                update(c).where(c.c.id == uuid.UUID(campaign_id)).values(balance_due_by=past)
            )
            o = customer_order
            await session.execute(
                update(o)
                .where(o.c.campaign_id == uuid.UUID(campaign_id), o.c.status == "balance_due")
                .values(balance_due_by=past)
            )
            kind = "presale.balance_deadline"
        j = tables.scheduled_job
        await session.execute(
            update(j).where(j.c.kind == kind, j.c.key == campaign_id).values(run_at=past)
        )


async def order_event_types(app: PaymentsApp, order_id: str) -> list[str]:
    """The types of the outbox events published about one order, in order."""
    outbox = app.app.state.tables.outbox
    async with app.app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(outbox.c.event_type)
            .where(outbox.c.envelope["payload"]["order_id"].as_string() == order_id)
            .order_by(outbox.c.id)
        )
        return list(rows)


async def order_refunds(app: PaymentsApp, order_id: str) -> list[int]:
    """The amounts of the payment layer's refunds of one order's payments."""
    payment, refund = app.ctx.tables.payment, app.ctx.tables.refund
    async with app.app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(refund.c.amount)
            .join(payment, payment.c.id == refund.c.payment_id)
            .where(payment.c.reference.like(f"order:{order_id}:%"))
            .order_by(refund.c.created_at)
        )
        return list(rows)


def terms_body(**overrides: Any) -> dict[str, Any]:
    """The body of ``PUT /v1/presales/{id}``: :func:`campaign_body` without what cannot change."""
    body = campaign_body(**overrides)
    body.pop("currency")
    return body


async def order_events(app: PaymentsApp, order_id: str) -> list[dict[str, Any]]:
    """The payloads of the outbox events published about one order, in order."""
    outbox = app.app.state.tables.outbox
    async with app.app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(outbox.c.envelope)
            .where(outbox.c.envelope["payload"]["order_id"].as_string() == order_id)
            .order_by(outbox.c.id)
        )
        return [dict(envelope["payload"]) for envelope in rows]
