"""A group buy collected at a pickup point, from end to end on real processes through the
gateway: a community leader runs a pickup point, a customer opens a group of five and four
friends join through its share code, their payments complete with the simulated provider
(cards and WeChat Pay), the group forms, the campaign closes at its time, the batch arrives
at the point, each friend collects with their pickup code, the orders complete, and the
pickup leader's commission reaches referrals, available."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Platform, TokenFactory
from tests.helpers import eventually
from tests.orders.group_support import GROUP_PRICE, LEADER_PRICE, offer_body
from tests.orders.pickup_support import point_body
from tests.orders.presale_support import campaign_body

pytestmark = pytest.mark.xdist_group("processes")

LEADER_BPS = 300  # the pickup leader's rate: 3 %


async def test_a_group_of_five_collects_at_its_pickup_point(
    platform: Platform, auth: TokenFactory
) -> None:
    merchant = f"m_group_{uuid.uuid4().hex[:8]}"
    staff = auth("staff", merchant_id=merchant)
    closes_at = datetime.now(UTC) + timedelta(seconds=12)
    body = campaign_body(
        min_quantity=1,
        deposit={"type": "full"},
        closes_at=closes_at.isoformat(),
        return_window_days=0,
    )
    opener, *friends = [auth("customer") for _ in range(5)]
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as gw:

        async def post(path: str, json: dict[str, Any], headers: dict[str, str]) -> Any:
            response = await gw.post(
                path, json=json, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
            )
            assert response.status_code in (200, 201), response.text
            return response.json()

        async def get(path: str, headers: dict[str, str] | None = None) -> Any:
            response = await gw.get(path, headers=headers or {})
            assert response.status_code == 200, response.text
            return response.json()

        # The merchant: a program paying pickup leaders, a campaign with group buying.
        rules = await gw.put(
            "/v1/commission-rules",
            json={"enrollment": "open", "level1_bps": 1000, "leader_bps": LEADER_BPS},
            headers=staff,
        )
        assert rules.status_code == 200, rules.text
        campaign_id = (await post("/v1/presales", body, staff))["id"]
        assert (await post(f"/v1/presales/{campaign_id}/publish", {}, staff))["status"] == "open"
        offer = await gw.put(
            f"/v1/presales/{campaign_id}/group-buy",
            json=offer_body(group_size=5),
            headers=staff,
        )
        assert offer.status_code == 200, offer.text

        # A neighbour runs a pickup point, approved by the merchant's staff.
        pickup_leader = auth("customer")
        applied = await post(
            "/v1/pickup-points/leaders",
            {"merchant_id": merchant, "real_name": "Wang Fang", "phone": "13900001111"},
            pickup_leader,
        )
        await post(f"/v1/pickup-points/leaders/{applied['id']}/approve", {}, staff)
        point = await post("/v1/pickup-points", point_body(merchant), pickup_leader)

        # A customer opens a group and shares its code; four friends join through it.
        def order_body(name: str, method: str) -> dict[str, Any]:
            return {
                "sku": "S",
                "quantity": 1,
                "method": method,
                "payment_method": "pm_wechat_pay" if method == "wechat_pay" else "pm_card_visa",
                "pickup_point_id": point["id"],
                "display_name": name,
                "avatar_url": f"https://img.example/{name}.png",
            }

        opened = await post(
            f"/v1/presales/{campaign_id}/groups", order_body("Opener", "card"), opener
        )
        code = opened["group"]["code"]
        assert opened["order"]["status"] == "paid"
        assert opened["order"]["first_amount"] == LEADER_PRICE
        orders = [(opener, opened["order"])]
        for i, friend in enumerate(friends):
            method = "wechat_pay" if i % 2 else "card"
            joined = await post(f"/v1/groups/{code}/orders", order_body(f"F{i}", method), friend)
            order = joined["order"]
            assert order["first_amount"] == GROUP_PRICE
            if method == "wechat_pay":  # the friend scans the QR code
                assert order["payment"]["status"] == "requires_action"
                await post(
                    f"/v1/payments/{order['payment']['id']}/simulate-action",
                    {"succeed": True},
                    friend,
                )
            orders.append((friend, order))

        async def formed() -> dict[str, Any] | None:
            page = await get(f"/v1/groups/{code}")
            return page if page["status"] == "formed" else None

        page = await eventually(formed, "the fifth payment forms the group")
        assert page["places_left"] == 0
        assert sorted(m["display_name"] for m in page["members"]) == [
            "F0",
            "F1",
            "F2",
            "F3",
            "Opener",
        ]

        async def closed() -> bool:
            campaign = await get(f"/v1/presales/{campaign_id}", staff)
            return bool(campaign["status"] == "succeeded")

        await eventually(closed, "the worker closes the campaign at its time", seconds=60)

        # The batch reaches the point; each buyer collects with their own code.
        arrived = await post(
            f"/v1/pickup-points/{point['id']}/arrivals", {"campaign_id": campaign_id}, staff
        )
        assert arrived["arrived"] == 5
        for buyer, order in orders:
            mine = await get(f"/v1/orders/{order['id']}", buyer)
            handed = await post(
                f"/v1/pickup-points/{point['id']}/pickups",
                {"code": mine["pickup_code"]},
                pickup_leader,
            )
            assert (handed["order_id"], handed["state"]) == (order["id"], "picked_up")

        async def completed() -> bool:
            listed = await get(
                f"/v1/orders?campaign_id={campaign_id}&status=completed&limit=10", staff
            )
            return len(listed["items"]) == 5

        await eventually(completed, "every order completes after its return window")

        # The pickup leader earned 3 % of each order, available once it completed.
        expected = sorted(int(o["first_amount"]) * LEADER_BPS // 10_000 for _, o in orders)

        async def commissions() -> list[int] | None:
            listed = await get("/v1/commissions?limit=10", pickup_leader)
            items = listed["items"]
            ready = [c for c in items if c["state"] == "available" and c["payee"] == "leader"]
            return sorted(c["amount"] for c in ready) if len(ready) == 5 else None

        assert await eventually(commissions, "the leader's commissions reach referrals") == expected
