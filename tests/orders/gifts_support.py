"""Helpers of the gift tests: addresses, gift orders, claims and a gift's deadline brought to
now (the one place that arranges time behind the API's back)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import select, update

from services.orders.gifts.service import UNCLAIMED_JOB
from services.orders.models import order_gift
from tests.orders.presale_support import order
from tests.shared.payments.support import PaymentsApp


def address(name: str = "Li Lei", **overrides: Any) -> dict[str, Any]:
    return {
        "recipient_name": name,
        "phone": "+86 138 0013 8000",
        "lines": ["Room 1203, Building 5", "88 Huaihai Road, Xuhui, Shanghai"],
        "postal_code": "200030",
        **overrides,
    }


async def gift_order(
    app: PaymentsApp, buyer: dict[str, str], campaign_id: str, **extra: Any
) -> dict[str, Any]:
    """A gift order (paid unless ``payment_method=None``); its JSON."""
    placed = await order(
        app, buyer, campaign_id, gift={"message": "生日快乐! From Han Meimei"}, **extra
    )
    assert placed.status_code == 201, placed.text
    body: dict[str, Any] = placed.json()
    return body


async def gift_view(app: PaymentsApp, who: dict[str, str], order_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/orders/{order_id}/gift", headers=who)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def claim_token(app: PaymentsApp, buyer: dict[str, str], order_id: str) -> str:
    """The token of the claim link the buyer sends to the recipient."""
    link = (await gift_view(app, buyer, order_id))["claim_url"]
    assert link is not None
    return str(parse_qs(urlsplit(link).query)["token"][0])


async def claim(
    app: PaymentsApp, who: dict[str, str], token: str, **overrides: Any
) -> httpx.Response:
    body = {"token": token, "address": address(**overrides)}
    return await app.client.post("/v1/orders/gift-claims", json=body, headers=who)


async def make_gift_due(app: PaymentsApp, order_id: str) -> None:
    """Brings a gift's claim deadline, and its job, to now."""
    past = datetime.now(UTC) - timedelta(seconds=2)
    async with app.app.state.sessionmaker() as session, session.begin():
        g = order_gift
        await session.execute(
            update(g).where(g.c.order_id == uuid.UUID(order_id)).values(claim_by=past)
        )
        j = app.app.state.tables.scheduled_job
        await session.execute(
            update(j).where(j.c.kind == UNCLAIMED_JOB, j.c.key == order_id).values(run_at=past)
        )


async def leaked_token(app: PaymentsApp, order_id: str) -> str:
    """A gift's token read behind the API's back (as if it had leaked before payment)."""
    g = order_gift
    async with app.app.state.sessionmaker() as session:
        token = await session.scalar(select(g.c.token).where(g.c.order_id == uuid.UUID(order_id)))
    assert token is not None
    return str(token)
