"""The rules of pre-sales one by one: bad input, deposit types, the balance window, refunds,
the terms lock, the kill switch, cancellation, an interrupted close and fulfilment."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.orders.models import customer_order
from services.orders.orders.service import Orders
from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.orders.presale_support import (
    campaign_body,
    make_due,
    open_campaign,
    order,
    order_event_types,
    order_refunds,
    run_jobs,
    terms_body,
)
from tests.shared.payments.support import PaymentsApp, new_merchant


async def _get(app: PaymentsApp, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _settle(app: PaymentsApp) -> None:
    """Jobs (refunds among them) and the simulated provider's events, until nothing is left."""
    await run_jobs(app)
    await app.tick()


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        (
            {
                "price_tiers": [
                    {"min_quantity": 1, "unit_price": 100},
                    {"min_quantity": 1, "unit_price": 90},
                ]
            },
            "presale_tiers_invalid",
            "price_tiers",
        ),
        (
            {
                "price_tiers": [
                    {"min_quantity": 1, "unit_price": 100},
                    {"min_quantity": 5, "unit_price": 120},
                ]
            },
            "presale_tiers_invalid",
            "price_tiers",
        ),
        (
            {"price_tiers": [{"min_quantity": 2, "unit_price": 100}]},
            "presale_tiers_invalid",
            "price_tiers",
        ),
        (
            {"deposit": {"type": "deposit", "unit_deposit": 9901}},
            "presale_deposit_above_price",
            "deposit.unit_deposit",
        ),
        (
            {"closes_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()},
            "presale_closes_in_past",
            "closes_at",
        ),
        ({"capacity": 5}, "presale_capacity_below_minimum", "capacity"),
        (
            {"deposit": {"type": "inflated_deposit", "unit_deposit": 2000}},
            "presale_deposit_invalid",
            "deposit.unit_credit",
        ),
        (
            {"early_bird": {"unit_price": 13000, "units": 5}},
            "presale_early_bird_invalid",
            "early_bird.unit_price",
        ),
    ],
)
async def test_bad_campaign_terms_are_refused_with_a_code_naming_the_field(
    sim_orders: PaymentsApp, auth: TokenFactory, overrides: dict[str, Any], code: str, field: str
) -> None:
    staff = auth("staff", merchant_id=new_merchant())
    response = await sim_orders.client.post(
        "/v1/presales", json=campaign_body(**overrides), headers=staff
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (response.json()["code"], response.json()["field"]) == (code, field)
    listed = await _get(sim_orders, "/v1/presales", staff)
    assert listed["items"] == []


@pytest.mark.parametrize("quantity", [0, -1, 10**9, "2", 1.5, None])
async def test_a_bad_quantity_is_refused_and_reserves_nothing(
    sim_orders: PaymentsApp, auth: TokenFactory, quantity: Any
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    response = await order(sim_orders, auth("customer"), campaign_id, quantity=quantity)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert campaign["reserved_quantity"] == 0


async def test_orders_are_refused_on_paused_closed_draft_and_unknown_campaigns(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    paused = await sim_orders.client.post(f"/v1/presales/{campaign_id}/pause", headers=staff)
    assert paused.json()["paused"] is True
    refused = await order(sim_orders, buyer, campaign_id)
    assert (refused.status_code, refused.json()["code"]) == (409, "presale_paused")
    await sim_orders.client.post(f"/v1/presales/{campaign_id}/resume", headers=staff)
    assert (await order(sim_orders, buyer, campaign_id)).status_code == 201
    unknown_sku = await order(sim_orders, buyer, campaign_id, sku="XL")
    assert (unknown_sku.status_code, unknown_sku.json()["code"]) == (422, "presale_variant_unknown")
    draft = await sim_orders.client.post("/v1/presales", json=campaign_body(), headers=staff)
    hidden = await order(sim_orders, buyer, draft.json()["id"])
    assert (hidden.status_code, hidden.json()["code"]) == (404, "presale_not_found")
    missing = await order(sim_orders, buyer, str(uuid.uuid4()))
    assert missing.status_code == 404
    await make_due(sim_orders, campaign_id, what="close")
    closed = await order(sim_orders, buyer, campaign_id)
    assert (closed.status_code, closed.json()["code"]) == (409, "presale_closed")
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert campaign["reserved_quantity"] == 1


async def test_an_unpaid_order_expires_and_gives_its_units_back(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=10)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=10, payment_method=None)
    assert placed.json()["status"] == "pending_payment"
    sold_out = await order(sim_orders, auth("customer"), campaign_id)
    assert sold_out.json()["code"] == "presale_sold_out"
    await run_jobs(sim_orders)
    assert (await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer))["status"] == (
        "pending_payment"
    )
    o = customer_order
    async with sim_orders.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            o.update()
            .where(o.c.id == uuid.UUID(placed.json()["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await run_jobs(sim_orders)
    expired = await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer)
    assert (expired["status"], expired["cancel_reason"]) == ("cancelled", "expired")
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert campaign["reserved_quantity"] == 0
    assert (await order(sim_orders, auth("customer"), campaign_id)).status_code == 201


async def test_an_inflated_deposit_counts_for_its_credit_and_never_below_zero(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    # 定金膨胀: pay ¥20 a unit, it counts ¥50 off the final price of ¥129.
    campaign_id, _ = await open_campaign(
        sim_orders,
        auth,
        min_quantity=1,
        deposit={"type": "inflated_deposit", "unit_deposit": 2000, "unit_credit": 5000},
    )
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=3)
    assert placed.json()["first_amount"] == 6000
    assert placed.json()["deposit_credit"] == 15000
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    due = await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer)
    assert due["balance_amount"] == 3 * 12900 - 15000
    paid = await sim_orders.post(
        f"/v1/orders/{due['id']}/balance-payment", {"payment_method": "pm_card_visa"}, buyer
    )
    # Paid in all: ¥60 deposit + ¥237 balance = ¥297 for goods worth ¥387.
    assert paid.json()["paid_total"] == 6000 + 3 * 12900 - 15000


async def test_full_prepayment_gets_the_difference_to_the_tier_reached_back(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(
        sim_orders,
        auth,
        min_quantity=1,
        deposit={"type": "full"},
        price_tiers=[
            {"min_quantity": 1, "unit_price": 12900},
            {"min_quantity": 4, "unit_price": 10900},
        ],
    )
    buyer = auth("customer")
    first = await order(sim_orders, buyer, campaign_id, quantity=2)
    assert (first.json()["status"], first.json()["paid_total"]) == ("paid", 2 * 12900)
    await order(sim_orders, auth("customer"), campaign_id, quantity=2)
    await make_due(sim_orders, campaign_id, what="close")
    await _settle(sim_orders)
    mine = await _get(sim_orders, f"/v1/orders/{first.json()['id']}", buyer)
    assert mine["status"] == "paid"
    assert mine["final_unit_price"] == 10900
    assert mine["refunded_total"] == 2 * (12900 - 10900)
    assert await order_refunds(sim_orders, mine["id"]) == [4000]


@pytest.mark.parametrize(
    ("deposit_type", "refunded"), [("deposit", 0), ("refundable_deposit", 4000)]
)
async def test_an_unpaid_balance_at_the_window_end_keeps_a_dingjin_and_refunds_a_dingjin(
    sim_orders: PaymentsApp, auth: TokenFactory, deposit_type: str, refunded: int
) -> None:
    campaign_id, _ = await open_campaign(
        sim_orders, auth, min_quantity=1, deposit={"type": deposit_type, "unit_deposit": 2000}
    )
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=2)
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    await make_due(sim_orders, campaign_id, what="balance")
    await _settle(sim_orders)
    ended = await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer)
    assert (ended["status"], ended["cancel_reason"]) == ("cancelled", "balance_unpaid")
    assert ended["refunded_total"] == refunded
    assert ended["forfeited_amount"] == 4000 - refunded
    late = await sim_orders.post(
        f"/v1/orders/{ended['id']}/balance-payment", {"payment_method": "pm_card_visa"}, buyer
    )
    assert late.json()["code"] == "order_balance_window_closed"


async def test_a_partial_then_a_full_refund_reconcile_to_the_fen(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=1)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=3)
    order_id = placed.json()["id"]
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    await sim_orders.post(
        f"/v1/orders/{order_id}/balance-payment", {"payment_method": "pm_card_visa"}, buyer
    )
    paid_total = 3 * 12900
    asked = await sim_orders.post(
        f"/v1/orders/{order_id}/refund-requests", {"reason": "one was torn", "amount": 12901}, buyer
    )
    assert asked.status_code == 201, asked.text
    approved = await sim_orders.post(
        f"/v1/orders/{order_id}/refunds/{asked.json()['id']}/approve", {}, staff
    )
    assert approved.json()["status"] == "approved"
    await _settle(sim_orders)
    partly = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert (partly["status"], partly["refunded_total"]) == ("paid", 12901)
    too_much = await sim_orders.post(
        f"/v1/orders/{order_id}/refunds", {"reason": "x", "amount": paid_total}, staff
    )
    assert too_much.json()["code"] == "order_refund_exceeds_paid"
    rest = await sim_orders.post(f"/v1/orders/{order_id}/refunds", {"reason": "all of it"}, staff)
    assert rest.json()["amount"] == paid_total - 12901
    await _settle(sim_orders)
    done = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert (done["status"], done["cancel_reason"]) == ("cancelled", "refunded")
    assert done["refunded_total"] == done["paid_total"] == paid_total
    # The payment layer's refunds say the same, to the fen: balance first, then the deposit.
    assert sum(await order_refunds(sim_orders, order_id)) == paid_total
    events = await order_event_types(sim_orders, order_id)
    assert events.count("order.refunded") == 3  # 12901 from the balance; the rest in two parts


async def test_after_the_first_deposit_terms_change_only_in_the_buyers_favour(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    body = campaign_body()
    campaign_id, staff = await open_campaign(
        sim_orders, auth, **{k: body[k] for k in ("opens_at", "closes_at")}
    )
    await order(sim_orders, auth("customer"), campaign_id)
    terms = terms_body(opens_at=body["opens_at"], closes_at=body["closes_at"])
    raised = dict(terms, price_tiers=[{"min_quantity": 1, "unit_price": 13900}])
    refused = await sim_orders.client.put(f"/v1/presales/{campaign_id}", json=raised, headers=staff)
    assert (refused.status_code, refused.json()["code"]) == (422, "presale_terms_locked")
    assert refused.json()["field"] == "price_tiers"
    earlier = dict(terms, closes_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    refused = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}", json=earlier, headers=staff
    )
    assert refused.json()["field"] == "closes_at"
    cheaper = dict(
        terms,
        price_tiers=[
            {"min_quantity": 1, "unit_price": 11900},
            {"min_quantity": 50, "unit_price": 9900},
        ],
        per_customer_limit=None,
    )
    accepted = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}", json=cheaper, headers=staff
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["price_tiers"][0]["unit_price"] == 11900


async def test_cancelling_a_campaign_refunds_every_order_whatever_its_deposit(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=1)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=2)
    cancelled = await sim_orders.client.post(f"/v1/presales/{campaign_id}/cancel", headers=staff)
    assert cancelled.json()["status"] == "cancelled"
    await _settle(sim_orders)
    ended = await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer)
    assert (ended["cancel_reason"], ended["refunded_total"]) == ("campaign_cancelled", 4000)
    again = await sim_orders.client.post(f"/v1/presales/{campaign_id}/cancel", headers=staff)
    assert again.json()["code"] == "presale_state_conflict"


async def test_a_close_interrupted_half_way_is_finished_by_the_next_run_refunding_once(
    sim_orders: PaymentsApp, auth: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=100)
    buyers = [auth("customer") for _ in range(4)]
    ids = [(await order(sim_orders, b, campaign_id, quantity=1)).json()["id"] for b in buyers]
    orders: Orders = sim_orders.app.state.orders
    real = orders.refund_everything
    calls = 0

    async def crash_on_the_third(*args: Any, **kwargs: Any) -> None:
        # Fault injection: the worker dies in the middle of the close's transaction.
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionResetError("worker killed")
        await real(*args, **kwargs)

    monkeypatch.setattr(orders, "refund_everything", crash_on_the_third)
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    half = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert half["status"] == "open"  # nothing of the interrupted close was committed
    for order_id in ids:
        assert await order_refunds(sim_orders, order_id) == []
    monkeypatch.setattr(orders, "refund_everything", real)
    await make_due(sim_orders, campaign_id, what="close")
    await _settle(sim_orders)
    await _settle(sim_orders)
    assert (await _get(sim_orders, f"/v1/presales/{campaign_id}", staff))["status"] == "failed"
    for order_id in ids:
        assert await order_refunds(sim_orders, order_id) == [2000]


async def test_orders_ship_deliver_and_complete_after_the_return_window(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders, auth, min_quantity=1, deposit={"type": "full"}, return_window_days=0
    )
    buyer = auth("customer")
    order_id = (await order(sim_orders, buyer, campaign_id)).json()["id"]
    ship = {"carrier": "SF", "tracking_number": "SF1"}
    before_close = await sim_orders.client.post(
        f"/v1/orders/{order_id}/ship", json=ship, headers=staff
    )
    assert before_close.json()["code"] == "order_state_conflict"
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    early = await sim_orders.client.post(f"/v1/orders/{order_id}/deliver", headers=staff)
    assert early.json()["code"] == "order_state_conflict"
    shipped = await sim_orders.client.post(f"/v1/orders/{order_id}/ship", json=ship, headers=staff)
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["status"] == "shipped"
    other = auth("staff", merchant_id=new_merchant())
    hidden = await sim_orders.client.post(f"/v1/orders/{order_id}/deliver", headers=other)
    assert hidden.status_code == 404
    delivered = await sim_orders.client.post(f"/v1/orders/{order_id}/deliver", headers=staff)
    assert delivered.json()["status"] == "delivered"
    await run_jobs(sim_orders)
    done = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert done["status"] == "completed"
    assert (await order_event_types(sim_orders, order_id))[-1] == "order.completed"
    stranger = await sim_orders.client.get(f"/v1/orders/{order_id}", headers=auth("customer"))
    assert stranger.status_code == 404


async def test_new_campaigns_take_the_merchants_return_window_and_keep_it(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    merchant = new_merchant()
    staff = auth("staff", merchant_id=merchant)
    default = await _get(sim_orders, "/v1/presales/merchant-policy", staff)
    assert default["return_window_days"] == 7
    body = campaign_body()
    body.pop("return_window_days", None)
    first = await sim_orders.client.post("/v1/presales", json=body, headers=staff)
    assert first.json()["return_window_days"] == 7
    put = await sim_orders.client.put(
        "/v1/presales/merchant-policy", json={"return_window_days": 15}, headers=staff
    )
    assert put.status_code == 200, put.text
    second = await sim_orders.client.post("/v1/presales", json=body, headers=staff)
    assert second.json()["return_window_days"] == 15
    kept = await _get(sim_orders, f"/v1/presales/{first.json()['id']}", staff)
    assert kept["return_window_days"] == 7  # a campaign keeps the terms it was made with
    other = auth("staff", merchant_id=new_merchant())
    assert (await _get(sim_orders, "/v1/presales/merchant-policy", other))[
        "return_window_days"
    ] == 7
    refused = await sim_orders.client.put(
        "/v1/presales/merchant-policy",
        params={"merchant_id": merchant},
        json={"return_window_days": 0},
        headers=other,
    )
    assert refused.status_code == 403


async def test_a_refund_request_can_be_rejected_and_nothing_moves(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    order_id = (await order(sim_orders, buyer, campaign_id, quantity=2)).json()["id"]
    stranger = await sim_orders.post(
        f"/v1/orders/{order_id}/refund-requests", {"reason": "mine?"}, auth("customer")
    )
    assert stranger.status_code == 404
    asked = await sim_orders.post(
        f"/v1/orders/{order_id}/refund-requests", {"reason": "changed my mind"}, buyer
    )
    assert asked.json()["amount"] == 4000
    rejected = await sim_orders.post(
        f"/v1/orders/{order_id}/refunds/{asked.json()['id']}/reject", {"note": "定金"}, staff
    )
    assert rejected.json()["status"] == "rejected"
    again = await sim_orders.post(
        f"/v1/orders/{order_id}/refunds/{asked.json()['id']}/approve", {}, staff
    )
    assert again.json()["code"] == "order_state_conflict"
    await _settle(sim_orders)
    mine = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert (mine["status"], mine["refunded_total"], mine["refund_pending"]) == (
        "deposit_paid",
        0,
        0,
    )
    assert await order_refunds(sim_orders, order_id) == []


async def test_two_workers_closing_at_once_close_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=1)
    buyers = [auth("customer") for _ in range(5)]
    ids = [(await order(sim_orders, b, campaign_id)).json()["id"] for b in buyers]
    await make_due(sim_orders, campaign_id, what="close")
    runners = [
        JobRunner(
            sessionmaker=sim_orders.app.state.sessionmaker,
            tables=sim_orders.app.state.tables,
            handlers=sim_orders.app.state.job_handlers,
        )
        for _ in range(2)
    ]
    await asyncio.gather(*(r.run_due() for r in runners))
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert campaign["status"] == "succeeded"
    for order_id in ids:
        assert (await order_event_types(sim_orders, order_id)).count("order.balance_due") == 1


async def test_a_deposit_that_succeeds_later_moves_its_order_when_the_webhook_lands(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, payment_method="pm_card_succeedLater")
    assert placed.json()["status"] == "pending_payment"
    assert placed.json()["payment"]["status"] == "processing"
    await sim_orders.tick()  # the provider settles; its webhook reaches the service
    paid = await _get(sim_orders, f"/v1/orders/{placed.json()['id']}", buyer)
    assert paid["status"] == "deposit_paid"
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    assert campaign["committed_quantity"] == 1


async def test_a_variants_capacity_holds_under_concurrent_orders(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders,
        auth,
        variants=[{"sku": "S", "name": "Small", "capacity": 5}, {"sku": "M", "name": "Medium"}],
    )
    answers = await asyncio.gather(
        *(order(sim_orders, auth("customer"), campaign_id, sku="S") for _ in range(20))
    )
    assert [r.status_code for r in answers].count(201) == 5
    assert {r.json()["code"] for r in answers if r.status_code != 201} == {"presale_sold_out"}
    campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
    small = next(v for v in campaign["variants"] if v["sku"] == "S")
    assert (small["reserved_quantity"], small["sold_out"]) == (5, True)
    assert campaign["reserved_quantity"] == 5
    assert (await order(sim_orders, auth("customer"), campaign_id, sku="M")).status_code == 201


async def test_a_campaign_is_fulfilled_once_every_paid_order_has_shipped(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders, auth, min_quantity=1, deposit={"type": "full"}
    )
    order_id = (await order(sim_orders, auth("customer"), campaign_id)).json()["id"]
    early = await sim_orders.client.post(f"/v1/presales/{campaign_id}/fulfil", headers=staff)
    assert early.json()["code"] == "presale_state_conflict"
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    unshipped = await sim_orders.client.post(f"/v1/presales/{campaign_id}/fulfil", headers=staff)
    assert unshipped.json()["code"] == "presale_state_conflict"
    await sim_orders.client.post(
        f"/v1/orders/{order_id}/ship",
        json={"carrier": "SF", "tracking_number": "SF2"},
        headers=staff,
    )
    done = await sim_orders.client.post(f"/v1/presales/{campaign_id}/fulfil", headers=staff)
    assert done.json()["status"] == "fulfilled"


async def test_concurrent_refund_decisions_never_promise_more_than_was_paid(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders, auth, min_quantity=1, deposit={"type": "full"}
    )
    buyer = auth("customer")
    order_id = (await order(sim_orders, buyer, campaign_id, quantity=2)).json()["id"]  # 25800
    answers = await asyncio.gather(
        *(
            sim_orders.post(
                f"/v1/orders/{order_id}/refunds", {"reason": "r", "amount": 10000}, staff
            )
            for _ in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 201] + [422] * 8
    await _settle(sim_orders)
    refunded = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert refunded["refunded_total"] == 20000
    assert sum(await order_refunds(sim_orders, order_id)) == 20000


async def test_a_double_tapped_balance_payment_is_one_payment(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth, min_quantity=1)
    buyer = auth("customer")
    order_id = (await order(sim_orders, buyer, campaign_id, quantity=1)).json()["id"]
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    answers = await asyncio.gather(
        *(
            sim_orders.post(
                f"/v1/orders/{order_id}/balance-payment", {"payment_method": "pm_card_visa"}, buyer
            )
            for _ in range(5)
        )
    )
    assert {a.status_code for a in answers} <= {201, 409}
    assert any(a.status_code == 201 for a in answers)
    paid = await _get(sim_orders, f"/v1/orders/{order_id}", buyer)
    assert (paid["status"], paid["paid_total"]) == ("paid", 12900)
    intents = await sim_orders.provider_intents(reference=f"order:{order_id}:balance")
    assert len(intents) == 1


async def test_staff_list_their_campaigns_with_variants_newest_first(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    staff = auth("staff", merchant_id=new_merchant())
    made = []
    for title in ("first", "second"):
        created = await sim_orders.client.post(
            "/v1/presales", json=campaign_body(title=title), headers=staff
        )
        made.append(created.json()["id"])
    listed = await _get(sim_orders, "/v1/presales", staff)
    assert [c["id"] for c in listed["items"]] == made[::-1]
    assert [[v["sku"] for v in c["variants"]] for c in listed["items"]] == [["S", "M"]] * 2
    other = await _get(sim_orders, "/v1/presales", auth("staff", merchant_id=new_merchant()))
    assert other["items"] == []
