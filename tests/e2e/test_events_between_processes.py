"""Events leave one service process and reach another over real HTTP, exactly once."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import select

from services.orders.models import platform as orders_platform
from services.referrals.models import platform as referrals_platform
from shared.db import make_engine
from tests.conftest import Platform, TokenFactory

pytestmark = pytest.mark.xdist_group("processes")


async def test_a_paid_payment_reaches_referrals_once_through_the_relay(
    platform: Platform, platform_db_urls: dict[str, str], auth: TokenFactory
) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=10) as gw:
        response = await gw.post(
            "/v1/payments",
            json={
                "reference": f"test:{uuid.uuid4().hex[:12]}",
                "merchant_id": "m_events",
                "amount": 990,
                "currency": "CNY",
                "payment_method": "pm_card_visa",
            },
            headers={
                **auth("customer"),
                "Idempotency-Key": uuid.uuid4().hex,
                "X-Request-ID": request_id,
            },
        )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded"

    orders = make_engine(platform_db_urls["orders"], pool_size=1)
    referrals = make_engine(platform_db_urls["referrals"], pool_size=1)
    outbox, inbox = orders_platform.outbox, referrals_platform.inbox
    try:
        # The orders worker (a real process) relays the event to the referrals process.
        for _ in range(100):
            async with orders.connect() as conn:
                rows = (
                    await conn.execute(
                        select(outbox.c.event_id, outbox.c.status, outbox.c.envelope).where(
                            outbox.c.event_type == "payment.succeeded",
                            outbox.c.envelope["request_id"].as_string() == request_id,
                        )
                    )
                ).all()
            if rows and all(r.status == "delivered" for r in rows):
                break
            await asyncio.sleep(0.1)
        assert len(rows) == 1, rows
        assert rows[0].status == "delivered"
        assert rows[0].envelope["payload"]["amount"] == 990
        async with referrals.connect() as conn:
            received = (
                await conn.execute(
                    select(inbox.c.source, inbox.c.event_type).where(
                        inbox.c.event_id == str(rows[0].event_id)
                    )
                )
            ).all()
        assert [tuple(r) for r in received] == [("orders", "payment.succeeded")]
    finally:
        await orders.dispose()
        await referrals.dispose()
    # The request id that caused the event is in the referrals process's log, so one id
    # follows the payment from the gateway to the service that consumed its event.
    log = platform.processes["referrals"].log.read_text()
    assert request_id in log
