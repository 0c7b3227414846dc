"""Helpers of the group buy tests: an offer, a campaign with group buying, ordering into
groups, paying later, and deadlines brought to now.

Like :func:`tests.orders.presale_support.make_due`, times are arranged behind the API's back
only here; the jobs and the expiry sweep then run exactly as the worker runs them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from services.orders.models import customer_order, group_buy
from tests.conftest import TokenFactory
from tests.orders.presale_support import open_campaign, run_jobs
from tests.shared.payments.support import PaymentsApp

LIST_PRICE, GROUP_PRICE, LEADER_PRICE = 12900, 9900, 8900


def offer_body(**overrides: Any) -> dict[str, Any]:
    """Groups of 3 within a day; ¥99 a unit in a group, ¥89 for the leader of S."""
    return {
        "group_size": 3,
        "time_limit_minutes": 24 * 60,
        "prices": [
            {"sku": "S", "unit_price": GROUP_PRICE, "leader_unit_price": LEADER_PRICE},
            {"sku": "M", "unit_price": GROUP_PRICE},
        ],
        **overrides,
    }


async def group_campaign(
    app: PaymentsApp, auth: TokenFactory, *, offer: dict[str, Any] | None = None, **overrides: Any
) -> tuple[str, dict[str, str]]:
    """An open campaign with group buying: by default a plain product sale (paid in full when
    ordering, no minimum to reach). Its id and a staff header."""
    terms = {"min_quantity": 1, "deposit": {"type": "full"}, **overrides}
    campaign_id, staff = await open_campaign(app, auth, **terms)
    response = await app.client.put(
        f"/v1/presales/{campaign_id}/group-buy", json=offer or offer_body(), headers=staff
    )
    assert response.status_code == 200, response.text
    return campaign_id, staff


def _body(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "sku": "S",
        "quantity": 1,
        "payment_method": "pm_card_visa",
        "display_name": name,
        "avatar_url": f"https://img.example/{name}.png",
        **extra,
    }


async def open_group(
    app: PaymentsApp, buyer: dict[str, str], campaign_id: str, name: str = "Leader", **extra: Any
) -> httpx.Response:
    """Opens a group by ordering into it (paid at once unless ``payment_method=None``)."""
    return await app.post(f"/v1/presales/{campaign_id}/groups", _body(name, extra), buyer)


async def join(
    app: PaymentsApp, buyer: dict[str, str], code: str, name: str = "Member", **extra: Any
) -> httpx.Response:
    return await app.post(f"/v1/groups/{code}/orders", _body(name, extra), buyer)


async def opened(
    app: PaymentsApp, buyer: dict[str, str], campaign_id: str, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """A group opened (and paid) by ``buyer``: its code and the leader's order."""
    response = await open_group(app, buyer, campaign_id, **extra)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return str(body["group"]["code"]), body["order"]


async def joined(
    app: PaymentsApp, buyer: dict[str, str], code: str, **extra: Any
) -> dict[str, Any]:
    """The order of ``buyer``, who joined the group ``code``."""
    response = await join(app, buyer, code, **extra)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()["order"]
    return order


async def group(app: PaymentsApp, code: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/groups/{code}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def get_order(app: PaymentsApp, buyer: dict[str, str], order_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/orders/{order_id}", headers=buyer)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def pay(app: PaymentsApp, buyer: dict[str, str], order: dict[str, Any]) -> httpx.Response:
    """Completes an order's first payment, started without a payment method."""
    return await app.post(
        f"/v1/payments/{order['payment']['id']}/confirm", {"payment_method": "pm_card_visa"}, buyer
    )


async def settle(app: PaymentsApp) -> None:
    """Jobs (refunds among them) and the simulated provider's events, until nothing is left."""
    await run_jobs(app)
    await app.tick()
    await run_jobs(app)


async def make_group_due(app: PaymentsApp, code: str) -> None:
    """Brings a group's deadline to now, with its ``group.expire`` job (due again if it ran,
    as when a second worker runs it)."""
    past = datetime.now(UTC) - timedelta(seconds=2)
    async with app.app.state.sessionmaker() as session, session.begin():
        group_id = await session.scalar(
            update(group_buy)
            .where(group_buy.c.code == code)
            .values(expires_at=past)
            .returning(group_buy.c.id)
        )
        jobs = app.app.state.tables.scheduled_job
        await session.execute(
            update(jobs)
            .where(jobs.c.kind == "group.expire", jobs.c.key == str(group_id))
            .values(run_at=past, status="pending")
        )


async def expire_order(app: PaymentsApp, order_id: str) -> None:
    """An unpaid order's time is up: the expiry sweep (run by ``run_jobs``) ends it."""
    o = customer_order
    async with app.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(o)
            .where(o.c.id == uuid.UUID(order_id))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def group_job_status(app: PaymentsApp, code: str) -> str:
    """The status of the group's ``group.expire`` job."""
    jobs = app.app.state.tables.scheduled_job
    async with app.app.state.sessionmaker() as session:
        group_id = await session.scalar(select(group_buy.c.id).where(group_buy.c.code == code))
        status = await session.scalar(
            select(jobs.c.status).where(jobs.c.kind == "group.expire", jobs.c.key == str(group_id))
        )
    return str(status)
