"""Pre-sale campaigns and their orders on real PostgreSQL, with the simulated provider."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.conftest import TokenFactory
from tests.orders.presale_support import (
    make_due,
    open_campaign,
    order,
    order_event_types,
    order_events,
    order_refunds,
    run_jobs,
    terms_body,
)
from tests.shared.payments.support import PaymentsApp, new_merchant


async def _campaign(app: PaymentsApp, campaign_id: str, staff: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _order(app: PaymentsApp, headers: dict[str, str], order_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/v1/orders/{order_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_order_reserves_units_and_its_paid_deposit_commits_them(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=3, referral_code="ALICE1")
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body["status"] == "deposit_paid"
    assert body["first_amount"] == 3 * 2000
    assert body["paid_total"] == 6000
    assert body["payment"]["status"] == "succeeded"
    assert body["referral_code"] == "ALICE1"
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert (campaign["reserved_quantity"], campaign["committed_quantity"]) == (3, 3)
    assert campaign["terms_locked"] is True
    public = await sim_orders.client.get(f"/v1/presales/{campaign_id}/public")
    assert public.status_code == 200
    progress = public.json()
    assert progress["committed_quantity"] == 3
    assert progress["buyers"] == 1
    assert progress["progress_bps"] == 3000
    assert progress["current_unit_price"] == 12900
    assert (progress["next_unit_price"], progress["units_to_next_tier"]) == (10900, 97)
    assert progress["sold_out"] is False
    types = await order_event_types(sim_orders, body["id"])
    assert types == ["order.paid"]
    (paid_event,) = await order_events(sim_orders, body["id"])
    assert paid_event["referral_code"] == "ALICE1"
    assert (paid_event["stage"], paid_event["amount"], paid_event["paid_total"]) == (
        "deposit",
        6000,
        6000,
    )


async def test_close_with_the_minimum_reached_makes_balances_due_at_the_tier_reached(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=100)
    early = auth("customer")
    first = await order(sim_orders, early, campaign_id, quantity=40)
    assert first.status_code == 201, first.text
    for _ in range(3):
        later = await order(sim_orders, auth("customer"), campaign_id, quantity=20)
        assert later.status_code == 201, later.text
    # Exactly 100 units: the 100+ tier (¥109) for everyone, the first buyer included.
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["status"] == "succeeded"
    assert campaign["final_unit_price"] == 10900
    mine = await _order(sim_orders, early, first.json()["id"])
    assert mine["status"] == "balance_due"
    assert mine["balance_amount"] == 40 * 10900 - 40 * 2000
    assert mine["balance_due_by"] is not None
    paid = await sim_orders.post(
        f"/v1/orders/{mine['id']}/balance-payment", {"payment_method": "pm_card_visa"}, early
    )
    assert paid.status_code == 201, paid.text
    assert paid.json()["status"] == "paid"
    assert paid.json()["paid_total"] == 40 * 10900
    types = await order_event_types(sim_orders, mine["id"])
    assert types == ["order.paid", "order.balance_due", "order.paid"]


async def test_close_with_the_minimum_missed_refunds_every_deposit(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=50)
    buyers = [auth("customer") for _ in range(3)]
    ids = []
    for buyer in buyers:
        placed = await order(sim_orders, buyer, campaign_id, quantity=2)
        assert placed.status_code == 201, placed.text
        ids.append(placed.json()["id"])
    unpaid = await order(sim_orders, auth("customer"), campaign_id, quantity=1, payment_method=None)
    assert unpaid.json()["status"] == "pending_payment"
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)  # the close, then the refund jobs it scheduled
    await sim_orders.tick()
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["status"] == "failed"
    for buyer, order_id in zip(buyers, ids, strict=True):
        mine = await _order(sim_orders, buyer, order_id)
        assert mine["status"] == "cancelled"
        assert mine["cancel_reason"] == "campaign_failed"
        assert mine["refunded_total"] == mine["paid_total"] == 4000
        assert mine["refund_pending"] == 0
    assert campaign["reserved_quantity"] == 6  # the unpaid order gave its unit back
    # Running the jobs again refunds nothing twice.
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    for order_id in ids:
        assert await order_refunds(sim_orders, order_id) == [4000]


async def test_two_hundred_concurrent_orders_for_fifty_units_reserve_exactly_fifty(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders, auth, capacity=50, min_quantity=10, per_customer_limit=2
    )
    buyers = [auth("customer") for _ in range(100)]

    async def attempt(i: int) -> int:
        response = await order(sim_orders, buyers[i % 100], campaign_id, quantity=1)
        return int(response.status_code)

    codes = await asyncio.gather(*(attempt(i) for i in range(200)))
    assert codes.count(201) == 50
    assert set(codes) <= {201, 409}
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == campaign["committed_quantity"] == 50
    listed = await sim_orders.client.get(
        "/v1/orders", params={"campaign_id": campaign_id, "limit": 100}, headers=staff
    )
    per_buyer: dict[str, int] = {}
    for item in listed.json()["items"]:
        per_buyer[item["customer_id"]] = per_buyer.get(item["customer_id"], 0) + item["quantity"]
    assert sum(per_buyer.values()) == 50
    assert max(per_buyer.values()) <= 2


async def test_one_customer_sending_thirty_concurrent_orders_gets_at_most_the_limit(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, per_customer_limit=2)
    buyer = auth("customer")
    codes = await asyncio.gather(
        *(order(sim_orders, buyer, campaign_id, quantity=1) for _ in range(30))
    )
    statuses = [r.status_code for r in codes]
    assert statuses.count(201) == 2, statuses
    refused = [r.json()["code"] for r in codes if r.status_code != 201]
    assert set(refused) == {"presale_customer_limit"}
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == 2


async def test_a_retried_order_with_the_same_key_is_one_order(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    key = uuid.uuid4().hex
    first = await order(sim_orders, buyer, campaign_id, quantity=2, key=key)
    again = await order(sim_orders, buyer, campaign_id, quantity=2, key=key)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == 2


async def test_staff_of_another_merchant_cannot_see_or_change_a_campaign(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth)
    stranger = auth("staff", merchant_id=new_merchant())
    seen = await sim_orders.client.get(f"/v1/presales/{campaign_id}", headers=stranger)
    assert seen.status_code == 404
    assert seen.json()["code"] == "presale_not_found"
    paused = await sim_orders.client.post(f"/v1/presales/{campaign_id}/pause", headers=stranger)
    assert paused.status_code == 404
    changed = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}", json=terms_body(), headers=stranger
    )
    assert changed.status_code == 404


async def test_the_generic_payment_endpoint_refuses_an_order_reference(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=1, payment_method=None)
    order_id = placed.json()["id"]
    response = await sim_orders.post(
        "/v1/payments",
        {
            "reference": f"order:{order_id}:first",
            "merchant_id": placed.json()["merchant_id"],
            "amount": 1,
            "currency": "CNY",
            "payment_method": "pm_card_visa",
        },
        buyer,
    )
    assert response.status_code == 422
    assert response.json()["code"] == "payment_reference_reserved"
    assert (await _order(sim_orders, buyer, order_id))["status"] == "pending_payment"
