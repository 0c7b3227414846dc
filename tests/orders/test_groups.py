"""Group buys (拼团) on real PostgreSQL with the simulated provider: forming, concurrent joins
and payments, expiry with and without virtual completion, members refunded or expired
before forming, and the deadline against a payment whatever order they arrive in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.orders.orders.service import Orders
from tests.conftest import TokenFactory
from tests.orders.group_support import (
    GROUP_PRICE,
    LEADER_PRICE,
    LIST_PRICE,
    expire_order,
    get_order,
    group,
    group_campaign,
    group_job_status,
    join,
    joined,
    make_group_due,
    offer_body,
    opened,
    pay,
    settle,
)
from tests.orders.presale_support import make_due, order, order_event_types, order_refunds, run_jobs
from tests.shared.payments.support import PaymentsApp


async def _campaign(app: PaymentsApp, campaign_id: str, staff: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_leader_opens_a_group_at_the_leaders_price_and_n_paid_members_form_it(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth)
    leader = auth("customer")
    opened_now = await sim_orders.post(
        f"/v1/presales/{campaign_id}/groups",
        {
            "sku": "S",
            "quantity": 2,
            "payment_method": "pm_card_visa",
            "display_name": "小王",
            "avatar_url": "https://img.example/wang.png",
        },
        leader,
    )
    assert opened_now.status_code == 201, opened_now.text
    body = opened_now.json()
    code = body["group"]["code"]
    assert body["order"]["status"] == "paid"
    assert body["order"]["group_unit_price"] == LEADER_PRICE
    assert body["order"]["paid_total"] == 2 * LEADER_PRICE
    assert body["group"]["share_url"] == f"https://m.qunbuy.example/g/{code}"
    assert (body["group"]["status"], body["group"]["places_left"]) == ("open", 2)
    assert 0 < body["group"]["seconds_left"] <= 24 * 3600
    members = [auth("customer"), auth("customer")]
    first = await joined(sim_orders, members[0], code)
    assert (first["group_unit_price"], first["paid_total"]) == (GROUP_PRICE, GROUP_PRICE)
    assert (await group(sim_orders, code))["status"] == "open"
    second = await join(sim_orders, members[1], code, name="Zhao")
    assert second.json()["group"]["status"] == "formed"
    public = await group(sim_orders, code)
    assert (public["status"], public["places_left"], public["paid_members"]) == ("formed", 0, 3)
    assert public["seconds_left"] == 0
    assert [(m["display_name"], m["leader"], m["paid"]) for m in public["members"]] == [
        ("小王", True, True),
        ("Member", False, True),
        ("Zhao", False, True),
    ]
    assert public["members"][0]["avatar_url"] == "https://img.example/wang.png"
    assert "customer_id" not in str(public)
    late = await join(sim_orders, auth("customer"), code)
    assert (late.status_code, late.json()["code"]) == (409, "group_not_open")
    assert await group_job_status(sim_orders, code) == "cancelled"
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == campaign["committed_quantity"] == 4
    # A plain order of the same campaign still pays the list price.
    alone = await order(sim_orders, auth("customer"), campaign_id)
    assert (alone.json()["paid_total"], alone.json()["group_id"]) == (LIST_PRICE, None)
    mine = await sim_orders.client.get(f"/v1/orders/{first['id']}/group", headers=members[0])
    assert mine.json()["code"] == code


async def test_twenty_concurrent_joins_into_a_group_of_five_make_exactly_five_paid_members(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth, offer=offer_body(group_size=5))
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    answers = await asyncio.gather(*(join(sim_orders, auth("customer"), code) for _ in range(20)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 4, statuses
    # Full while places are held, then formed: refused either way, nothing charged.
    refused = {a.json()["code"] for a in answers if a.status_code != 201}
    assert refused <= {"group_full", "group_not_open"}, refused
    await settle(sim_orders)
    public = await group(sim_orders, code)
    assert (public["status"], public["paid_members"], len(public["members"])) == ("formed", 5, 5)
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == campaign["committed_quantity"] == 5
    listed = await sim_orders.client.get(
        "/v1/orders", params={"campaign_id": campaign_id, "limit": 100}, headers=staff
    )
    assert [o["status"] for o in listed.json()["items"]] == ["paid"] * 5


async def test_payments_arriving_together_form_the_group_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth, offer=offer_body(group_size=5))
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    buyers = [auth("customer") for _ in range(4)]
    unpaid = [await joined(sim_orders, b, code, payment_method=None) for b in buyers]
    held = await group(sim_orders, code)
    assert (held["status"], held["places_left"], held["paid_members"]) == ("open", 0, 1)
    full = await join(sim_orders, auth("customer"), code)
    assert full.json()["code"] == "group_full"
    answers = await asyncio.gather(
        *(pay(sim_orders, b, o) for b, o in zip(buyers, unpaid, strict=True))
    )
    assert [a.status_code for a in answers] == [200] * 4
    public = await group(sim_orders, code)
    assert (public["status"], public["paid_members"]) == ("formed", 5)
    await settle(sim_orders)
    for buyer, placed in zip(buyers, unpaid, strict=True):
        assert (await get_order(sim_orders, buyer, placed["id"]))["status"] == "paid"
    assert (await group(sim_orders, code))["status"] == "formed"


async def test_a_group_expiring_short_of_n_refunds_every_paid_member_exactly_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth, offer=offer_body(group_size=4))
    leader, member, slow = auth("customer"), auth("customer"), auth("customer")
    code, leader_order = await opened(sim_orders, leader, campaign_id)
    member_order = await joined(sim_orders, member, code)
    unpaid = await joined(sim_orders, slow, code, payment_method=None)
    await make_group_due(sim_orders, code)
    await settle(sim_orders)
    await make_group_due(sim_orders, code)  # the deadline's job run again changes nothing
    await settle(sim_orders)
    public = await group(sim_orders, code)
    assert (public["status"], public["places_left"], public["seconds_left"]) == ("failed", 0, 0)
    for buyer, placed, paid in (
        (leader, leader_order, LEADER_PRICE),
        (member, member_order, GROUP_PRICE),
    ):
        ended = await get_order(sim_orders, buyer, placed["id"])
        assert (ended["status"], ended["cancel_reason"]) == ("cancelled", "group_failed")
        assert ended["refunded_total"] == ended["paid_total"] == paid
        assert await order_refunds(sim_orders, placed["id"]) == [paid]
        assert (await order_event_types(sim_orders, placed["id"])).count("order.refunded") == 1
    ended = await get_order(sim_orders, slow, unpaid["id"])
    assert (ended["status"], ended["cancel_reason"], ended["paid_total"]) == (
        "cancelled",
        "group_expired",
        0,
    )
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["reserved_quantity"] == campaign["committed_quantity"] == 0
    late = await join(sim_orders, auth("customer"), code)
    assert late.json()["code"] == "group_not_open"


async def test_a_group_expiring_short_of_n_completes_virtually_when_allowed(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(
        sim_orders, auth, offer=offer_body(group_size=4, virtual_completion=True)
    )
    leader, member, slow = auth("customer"), auth("customer"), auth("customer")
    code, leader_order = await opened(sim_orders, leader, campaign_id)
    member_order = await joined(sim_orders, member, code)
    unpaid = await joined(sim_orders, slow, code, payment_method=None)
    await make_group_due(sim_orders, code)
    await settle(sim_orders)
    public = await group(sim_orders, code)
    assert (public["status"], public["paid_members"]) == ("virtually_formed", 2)
    assert [m["display_name"] for m in public["members"]] == ["Leader", "Member"]
    for buyer, placed in ((leader, leader_order), (member, member_order)):
        kept = await get_order(sim_orders, buyer, placed["id"])
        assert (kept["status"], kept["refunded_total"]) == ("paid", 0)
        assert await order_refunds(sim_orders, placed["id"]) == []
    ended = await get_order(sim_orders, slow, unpaid["id"])
    assert (ended["status"], ended["cancel_reason"]) == ("cancelled", "group_expired")
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["committed_quantity"] == 2


async def test_a_group_with_nobody_paid_fails_even_with_virtual_completion(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(
        sim_orders, auth, offer=offer_body(virtual_completion=True)
    )
    code, _ = await opened(sim_orders, auth("customer"), campaign_id, payment_method=None)
    await make_group_due(sim_orders, code)
    await settle(sim_orders)
    assert (await group(sim_orders, code))["status"] == "failed"


async def test_a_member_refunded_before_forming_leaves_and_after_forming_does_not_dissolve_it(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth)
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    quitter = auth("customer")
    quitter_order = await joined(sim_orders, quitter, code, name="Quitter")
    refund = await sim_orders.post(
        f"/v1/orders/{quitter_order['id']}/refunds", {"reason": "changed my mind"}, staff
    )
    assert refund.status_code == 201, refund.text
    await settle(sim_orders)
    left = await get_order(sim_orders, quitter, quitter_order["id"])
    assert (left["status"], left["cancel_reason"], left["refunded_total"]) == (
        "cancelled",
        "refunded",
        GROUP_PRICE,
    )
    public = await group(sim_orders, code)
    assert (public["status"], public["places_left"], public["paid_members"]) == ("open", 2, 1)
    assert [m["display_name"] for m in public["members"]] == ["Leader"]
    late, last = auth("customer"), auth("customer")
    late_order = await joined(sim_orders, late, code)
    await joined(sim_orders, last, code)
    assert (await group(sim_orders, code))["status"] == "formed"
    after = await sim_orders.post(
        f"/v1/orders/{late_order['id']}/refunds", {"reason": "damaged"}, staff
    )
    assert after.status_code == 201, after.text
    await settle(sim_orders)
    kept = await group(sim_orders, code)
    assert (kept["status"], kept["paid_members"], len(kept["members"])) == ("formed", 3, 3)
    assert (await get_order(sim_orders, late, late_order["id"]))["status"] == "cancelled"
    assert await order_refunds(sim_orders, quitter_order["id"]) == [GROUP_PRICE]
    assert await order_refunds(sim_orders, late_order["id"]) == [GROUP_PRICE]


async def test_a_payment_for_a_place_released_by_expiry_is_refunded_not_counted(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth, offer=offer_body(group_size=2))
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    slow = auth("customer")
    unpaid = await joined(sim_orders, slow, code, payment_method=None)
    assert (await join(sim_orders, auth("customer"), code)).json()["code"] == "group_full"
    await expire_order(sim_orders, unpaid["id"])
    await run_jobs(sim_orders)
    freed = await group(sim_orders, code)
    assert (freed["places_left"], [m["display_name"] for m in freed["members"]]) == (1, ["Leader"])
    await joined(sim_orders, auth("customer"), code, name="Quick")
    assert (await group(sim_orders, code))["status"] == "formed"
    paid_late = await pay(sim_orders, slow, unpaid)
    assert paid_late.status_code == 200, paid_late.text
    await settle(sim_orders)
    ended = await get_order(sim_orders, slow, unpaid["id"])
    assert (ended["status"], ended["cancel_reason"]) == ("cancelled", "expired")
    assert ended["refunded_total"] == ended["paid_total"] == GROUP_PRICE
    assert await order_refunds(sim_orders, unpaid["id"]) == [GROUP_PRICE]
    public = await group(sim_orders, code)
    assert (public["status"], public["paid_members"]) == ("formed", 2)
    assert [m["display_name"] for m in public["members"]] == ["Leader", "Quick"]
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert campaign["committed_quantity"] == 2


@pytest.mark.parametrize("payment_first", [True, False], ids=["payment-first", "expiry-first"])
async def test_the_deadline_decides_whatever_order_a_payment_and_the_expiry_arrive_in(
    sim_orders: PaymentsApp, auth: TokenFactory, payment_first: bool
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth, offer=offer_body(group_size=2))
    leader, slow = auth("customer"), auth("customer")
    code, leader_order = await opened(sim_orders, leader, campaign_id)
    unpaid = await joined(sim_orders, slow, code, payment_method=None)
    await make_group_due(sim_orders, code)
    if payment_first:
        assert (await pay(sim_orders, slow, unpaid)).status_code == 200
        assert (await group(sim_orders, code))["status"] == "open"  # paid past the deadline
    await settle(sim_orders)
    if not payment_first:
        assert (await pay(sim_orders, slow, unpaid)).status_code == 200
    await settle(sim_orders)
    assert (await group(sim_orders, code))["status"] == "failed"
    for buyer, placed, paid in ((leader, leader_order, LEADER_PRICE), (slow, unpaid, GROUP_PRICE)):
        ended = await get_order(sim_orders, buyer, placed["id"])
        assert ended["status"] == "cancelled"
        assert ended["refunded_total"] == ended["paid_total"] == paid
        assert await order_refunds(sim_orders, placed["id"]) == [paid]


async def test_open_groups_to_join_soonest_deadline_first_without_full_unpaid_or_own_ones(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(
        sim_orders,
        auth,
        offer=offer_body(group_size=2, multiple_groups=True, time_limit_minutes=60),
    )
    me = auth("customer")
    first, _ = await opened(sim_orders, auth("customer"), campaign_id)
    second, _ = await opened(sim_orders, auth("customer"), campaign_id)
    mine, _ = await opened(sim_orders, me, campaign_id)
    await opened(sim_orders, auth("customer"), campaign_id, payment_method=None)
    full, _ = await opened(sim_orders, auth("customer"), campaign_id)
    await joined(sim_orders, auth("customer"), full)
    path = f"/v1/presales/{campaign_id}/groups"
    listed = await sim_orders.client.get(path)
    assert [g["code"] for g in listed.json()["items"]] == [first, second, mine]
    assert listed.json()["items"][0]["members"][0]["display_name"] == "Leader"
    page = await sim_orders.client.get(path, params={"limit": 1}, headers=me)
    assert [g["code"] for g in page.json()["items"]] == [first]
    rest = await sim_orders.client.get(
        path, params={"limit": 1, "cursor": page.json()["next_cursor"]}, headers=me
    )
    assert [g["code"] for g in rest.json()["items"]] == [second]
    assert rest.json()["next_cursor"] is None


async def test_a_campaign_closing_with_a_group_still_open_settles_the_group_first(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth)
    leader = auth("customer")
    code, leader_order = await opened(sim_orders, leader, campaign_id)
    alone = (await order(sim_orders, auth("customer"), campaign_id)).json()
    await make_due(sim_orders, campaign_id, what="close")
    await settle(sim_orders)
    assert (await group(sim_orders, code))["status"] == "failed"
    ended = await get_order(sim_orders, leader, leader_order["id"])
    assert (ended["cancel_reason"], ended["refunded_total"]) == ("group_failed", LEADER_PRICE)
    campaign = await _campaign(sim_orders, campaign_id, staff)
    assert (campaign["status"], campaign["committed_quantity"]) == ("succeeded", 1)
    assert alone["status"] == "paid"


async def test_a_deposit_campaigns_group_order_owes_its_balance_at_the_group_price(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(
        sim_orders,
        auth,
        offer=offer_body(group_size=2),
        deposit={"type": "deposit", "unit_deposit": 2000},
    )
    leader, member = auth("customer"), auth("customer")
    code, leader_order = await opened(sim_orders, leader, campaign_id, quantity=2)
    member_order = await joined(sim_orders, member, code)
    assert (leader_order["status"], leader_order["first_amount"]) == ("deposit_paid", 4000)
    assert (await group(sim_orders, code))["status"] == "formed"
    await make_due(sim_orders, campaign_id, what="close")
    await settle(sim_orders)
    due = await get_order(sim_orders, leader, leader_order["id"])
    assert (due["status"], due["final_unit_price"]) == ("balance_due", LEADER_PRICE)
    assert due["balance_amount"] == 2 * LEADER_PRICE - 4000
    other = await get_order(sim_orders, member, member_order["id"])
    assert other["balance_amount"] == GROUP_PRICE - 2000


async def test_an_expiry_interrupted_half_way_is_finished_by_the_next_run_refunding_once(
    sim_orders: PaymentsApp, auth: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth, offer=offer_body(group_size=4))
    code, leader_order = await opened(sim_orders, auth("customer"), campaign_id)
    members = [await joined(sim_orders, auth("customer"), code) for _ in range(2)]
    orders: Orders = sim_orders.app.state.orders
    real = orders.refund_everything
    calls = 0

    async def crash_on_the_second(*args: Any, **kwargs: Any) -> None:
        # Fault injection: the worker dies in the middle of the expiry's transaction.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("worker killed")
        await real(*args, **kwargs)

    monkeypatch.setattr(orders, "refund_everything", crash_on_the_second)
    await make_group_due(sim_orders, code)
    await run_jobs(sim_orders)
    assert (await group(sim_orders, code))["status"] == "open"  # nothing was committed
    assert await order_refunds(sim_orders, leader_order["id"]) == []
    monkeypatch.setattr(orders, "refund_everything", real)
    await make_group_due(sim_orders, code)
    await settle(sim_orders)
    assert (await group(sim_orders, code))["status"] == "failed"
    assert await order_refunds(sim_orders, leader_order["id"]) == [LEADER_PRICE]
    for member in members:
        assert await order_refunds(sim_orders, member["id"]) == [GROUP_PRICE]
