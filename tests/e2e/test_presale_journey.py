"""A pre-sale from end to end on real processes, through the gateway: staff create and open a
campaign, customers order and pay deposits (simulated provider), the worker closes it at its
time, balances are paid, orders ship and complete, and the order events reach referrals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.orders.models import platform as orders_platform
from services.referrals.models import platform as referrals_platform
from shared.db import make_engine
from tests.conftest import Platform, TokenFactory
from tests.helpers import eventually
from tests.orders.presale_support import campaign_body

pytestmark = pytest.mark.xdist_group("processes")


async def test_a_presale_from_publishing_to_completion(
    platform: Platform, platform_db_urls: dict[str, str], auth: TokenFactory
) -> None:
    merchant = f"m_journey_{uuid.uuid4().hex[:8]}"
    staff = auth("staff", merchant_id=merchant)
    buyers = [auth("customer") for _ in range(3)]
    closes_at = datetime.now(UTC) + timedelta(seconds=6)
    body = campaign_body(min_quantity=4, closes_at=closes_at.isoformat(), return_window_days=0)
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as gw:

        async def post(path: str, json: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
            return await gw.post(
                path, json=json, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
            )

        created = await gw.post("/v1/presales", json=body, headers=staff)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        opened = await gw.post(f"/v1/presales/{campaign_id}/publish", headers=staff)
        assert opened.json()["status"] == "open"

        orders = []
        for i, buyer in enumerate(buyers):
            placed = await post(
                f"/v1/presales/{campaign_id}/orders",
                {
                    "sku": "S",
                    "quantity": 2 if i == 0 else 1,
                    "method": "wechat_pay" if i == 1 else "card",
                    "payment_method": "pm_wechat_pay" if i == 1 else "pm_card_visa",
                    "referral_code": f"REF{i}",
                },
                buyer,
            )
            assert placed.status_code == 201, placed.text
            orders.append(placed.json())
        # The WeChat Pay buyer scans the QR code (the simulated provider's customer action).
        wechat = orders[1]["payment"]
        assert wechat["status"] == "requires_action"
        assert orders[1]["status"] == "pending_payment"
        scanned = await gw.post(
            f"/v1/payments/{wechat['id']}/simulate-action",
            json={"succeed": True},
            headers=buyers[1],
        )
        assert scanned.status_code == 200, scanned.text

        public = await gw.get(f"/v1/presales/{campaign_id}/public")
        assert public.json()["committed_quantity"] == 4

        async def closed() -> dict[str, Any] | None:
            c = (await gw.get(f"/v1/presales/{campaign_id}", headers=staff)).json()
            return c if c["status"] != "open" else None

        campaign = await eventually(closed, "the worker closes the campaign at its time")
        assert campaign["status"] == "succeeded"
        assert campaign["final_unit_price"] == 12900

        for order, buyer in zip(orders, buyers, strict=True):
            due = (await gw.get(f"/v1/orders/{order['id']}", headers=buyer)).json()
            assert due["status"] == "balance_due"
            paid = await post(
                f"/v1/orders/{order['id']}/balance-payment",
                {"payment_method": "pm_card_visa"},
                buyer,
            )
            assert paid.status_code == 201, paid.text
            assert paid.json()["status"] == "paid"
            shipped = await gw.post(
                f"/v1/orders/{order['id']}/ship",
                json={"carrier": "SF", "tracking_number": f"SF{order['id'][:8]}"},
                headers=staff,
            )
            assert shipped.json()["status"] == "shipped"
            delivered = await gw.post(f"/v1/orders/{order['id']}/deliver", headers=staff)
            assert delivered.json()["status"] == "delivered"

        async def completed() -> bool:
            listed = await gw.get(
                "/v1/orders",
                params={"campaign_id": campaign_id, "status": "completed"},
                headers=staff,
            )
            return len(listed.json()["items"]) == 3

        await eventually(completed, "every order completes after the return window")

    # Every order event reached referrals, once each.
    referrals = make_engine(platform_db_urls["referrals"], pool_size=1)
    source = make_engine(platform_db_urls["orders"], pool_size=1)
    outbox, inbox = orders_platform.outbox, referrals_platform.inbox
    ids = [o["id"] for o in orders]
    try:

        async def delivered_events() -> list[Any] | None:
            async with source.connect() as conn:
                rows = (
                    await conn.execute(
                        select(outbox.c.event_id, outbox.c.event_type, outbox.c.status).where(
                            outbox.c.event_type.like("order.%"),
                            outbox.c.envelope["payload"]["order_id"].as_string().in_(ids),
                        )
                    )
                ).all()
            return list(rows) if rows and all(r.status == "delivered" for r in rows) else None

        rows = await eventually(delivered_events, "the relay delivers the order events")
        types = sorted(r.event_type for r in rows)
        assert types == sorted(
            ["order.paid"] * 3
            + ["order.balance_due"] * 3
            + ["order.paid"] * 3
            + ["order.completed"] * 3
        )
        async with referrals.connect() as conn:
            received = (
                await conn.execute(
                    select(inbox.c.event_type).where(
                        inbox.c.source == "orders",
                        inbox.c.event_id.in_([str(r.event_id) for r in rows]),
                    )
                )
            ).all()
        assert sorted(r.event_type for r in received) == types
    finally:
        await referrals.dispose()
        await source.dispose()
