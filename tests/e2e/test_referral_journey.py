"""Referrals from end to end on real processes, through the gateway: a distributor recruited
through another's code, a customer's pre-sale orders through the first one's link, payment,
completion, both levels available, a withdrawal approved and paid, a partial refund reversing
the right amounts at both levels, and the take-back from the next withdrawal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Platform, TokenFactory
from tests.helpers import eventually
from tests.orders.presale_support import campaign_body

pytestmark = pytest.mark.xdist_group("processes")


async def test_commissions_follow_orders_from_link_to_take_back(
    platform: Platform, auth: TokenFactory
) -> None:
    merchant = f"m_ref_{uuid.uuid4().hex[:8]}"
    staff = auth("staff", merchant_id=merchant)
    a_user, b_user, buyer = (f"{p}_{uuid.uuid4().hex[:8]}" for p in ("a", "b", "c"))
    a, b, c = (auth("customer", sub=u) for u in (a_user, b_user, buyer))
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as gw:

        async def post(path: str, body: dict[str, Any], who: dict[str, str]) -> httpx.Response:
            return await gw.post(
                path, json=body, headers={**who, "Idempotency-Key": uuid.uuid4().hex}
            )

        rules = await gw.put(
            "/v1/commission-rules",
            json={
                "enrollment": "open",
                "level1_bps": 1000,
                "level2_bps": 500,
                "min_withdrawal": 100,
            },
            headers=staff,
        )
        assert rules.status_code == 200, rules.text
        person = {"merchant_id": merchant, "real_name": "Li", "phone": "13800000000"}
        upline = (await gw.post("/v1/distributors", json=person, headers=a)).json()
        seller = (
            await gw.post(
                "/v1/distributors", json={**person, "via_code": upline["code"]}, headers=b
            )
        ).json()
        assert seller["upline_id"] == upline["id"]
        await gw.post(f"/v1/distributors/{seller['id']}/verify", headers=staff)
        link = (
            await gw.post("/v1/referral-links", json={"distributor_id": seller["id"]}, headers=b)
        ).json()

        closes = datetime.now(UTC) + timedelta(seconds=5)
        body = campaign_body(
            min_quantity=1,
            deposit={"type": "full"},
            return_window_days=0,
            closes_at=closes.isoformat(),
        )
        campaign = (await gw.post("/v1/presales", json=body, headers=staff)).json()
        await gw.post(f"/v1/presales/{campaign['id']}/publish", headers=staff)
        await post(f"/v1/referral-links/{link['code']}/click", {}, c)
        orders = []
        for _ in range(2):
            placed = await post(
                f"/v1/presales/{campaign['id']}/orders",
                {
                    "sku": "S",
                    "quantity": 1,
                    "payment_method": "pm_card_visa",
                    "referral_code": link["code"],
                },
                c,
            )
            assert placed.status_code == 201, placed.text
            orders.append(placed.json()["id"])

        async def closed() -> bool:
            got = (await gw.get(f"/v1/presales/{campaign['id']}", headers=staff)).json()
            return bool(got["status"] == "succeeded")

        await eventually(closed, "the campaign closes")

        async def balances(distributor_id: str) -> dict[str, int]:
            got = await gw.get(f"/v1/distributors/{distributor_id}", headers=staff)
            found: dict[str, int] = got.json()["balances"]
            return found

        async def deliver(order_id: str) -> None:
            ship = {"carrier": "SF", "tracking_number": "SF9"}
            assert (
                await gw.post(f"/v1/orders/{order_id}/ship", json=ship, headers=staff)
            ).status_code == 200
            assert (
                await gw.post(f"/v1/orders/{order_id}/deliver", headers=staff)
            ).status_code == 200

        # The first order completes: its commissions become available; the second's pend.
        await deliver(orders[0])

        async def first_available() -> bool:
            return (await balances(seller["id"]))["available"] == 1290

        await eventually(first_available, "order 1's commission becomes available")
        assert (await balances(seller["id"]))["pending"] == 1290
        assert (await balances(upline["id"]))["available"] == 645

        w1 = await post("/v1/withdrawals", {"distributor_id": seller["id"], "amount": 1200}, b)
        assert w1.status_code == 201, w1.text
        await gw.post(f"/v1/withdrawals/{w1.json()['id']}/approve", headers=staff)
        paid = await post(
            f"/v1/withdrawals/{w1.json()['id']}/paid", {"external_reference": "WX-1"}, staff
        )
        assert paid.json()["status"] == "paid"

        # Half of order 1 is refunded after the withdrawal: 645 comes back from the seller
        # (90 still available, 555 owed) and 323 from the upline (645 -> 322).
        refund = await post(
            f"/v1/orders/{orders[0]}/refunds", {"reason": "half torn", "amount": 6450}, staff
        )
        assert refund.status_code == 201, refund.text

        async def reversed_() -> bool:
            return (await balances(seller["id"]))["owed"] == 555

        await eventually(reversed_, "the refund reverses the commissions")
        assert (await balances(seller["id"]))["available"] == 0
        assert (await balances(upline["id"]))["available"] == 322

        # The second order completes; the next withdrawal first settles what is owed.
        await deliver(orders[1])

        async def second_available() -> bool:
            return (await balances(seller["id"]))["available"] == 1290

        await eventually(second_available, "order 2's commission becomes available")
        w2 = await post("/v1/withdrawals", {"distributor_id": seller["id"], "amount": 700}, b)
        assert w2.status_code == 201, w2.text
        assert w2.json()["taken_back"] == 555
        assert await balances(seller["id"]) == {
            "pending": 0,
            "available": 35,
            "withdrawing": 700,
            "withdrawn": 1200,
            "owed": 0,
        }
