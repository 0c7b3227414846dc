"""Community pickup points (团长自提) on real PostgreSQL with the simulated provider: leaders
approved by staff, points they register, orders to an active point with a pickup code, the
pick list (nothing about payments), a batch arriving, pickups against the code (another
point's refused, twice refused, at once handed over once), and bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import TokenFactory
from tests.orders.gifts_support import address
from tests.orders.pickup_support import (
    approved_leader,
    merchant_of,
    pickup_point,
    point_body,
)
from tests.orders.presale_support import make_due, open_campaign, order, order_events, run_jobs
from tests.shared.payments.support import PaymentsApp, new_merchant

FULL = {"min_quantity": 1, "deposit": {"type": "full"}}


async def _get(app: PaymentsApp, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _setup(
    app: PaymentsApp, auth: TokenFactory
) -> tuple[str, dict[str, str], dict[str, str], dict[str, Any]]:
    """An open full-prepayment campaign and an active point of its merchant: the campaign,
    its staff, the point's leader and the point."""
    campaign_id, staff = await open_campaign(app, auth, **FULL)
    merchant = await merchant_of(app, campaign_id, staff)
    leader, point = await pickup_point(app, auth, merchant, staff)
    return campaign_id, staff, leader, point


async def _pickup_order(
    app: PaymentsApp, buyer: dict[str, str], campaign_id: str, point_id: str, **extra: Any
) -> dict[str, Any]:
    placed = await order(app, buyer, campaign_id, pickup_point_id=point_id, **extra)
    assert placed.status_code == 201, placed.text
    body: dict[str, Any] = placed.json()
    return body


class TestLeadersAndPoints:
    async def test_a_customer_runs_pickup_points_once_the_merchants_staff_approve(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        staff = auth("staff", merchant_id=merchant)
        leader = auth("customer")
        body = {"merchant_id": merchant, "real_name": "Wang Fang", "phone": "13900001111"}
        applied = await sim_orders.client.post(
            "/v1/pickup-points/leaders", json=body, headers=leader
        )
        assert applied.status_code == 201, applied.text
        assert applied.json()["status"] == "pending"
        leader_id = applied.json()["id"]
        twice = await sim_orders.client.post("/v1/pickup-points/leaders", json=body, headers=leader)
        assert (twice.status_code, twice.json()["code"]) == (409, "pickup_leader_exists")
        early = await sim_orders.client.post(
            "/v1/pickup-points", json=point_body(merchant), headers=leader
        )
        assert (early.status_code, early.json()["code"]) == (403, "pickup_leader_required")

        stranger = auth("staff", merchant_id=new_merchant())
        foreign = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/approve", json={}, headers=stranger
        )
        assert (foreign.status_code, foreign.json()["code"]) == (404, "pickup_leader_not_found")
        self_approved = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/approve", json={}, headers=leader
        )
        assert self_approved.status_code == 403
        pending = await _get(sim_orders, "/v1/pickup-points/leaders?status=pending", staff)
        assert [x["id"] for x in pending["items"]] == [leader_id]
        approved = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/approve",
            json={"note": "vetted"},
            headers=staff,
        )
        assert approved.json()["status"] == "active"
        rejected = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/reject", json={}, headers=staff
        )
        assert (rejected.status_code, rejected.json()["code"]) == (
            409,
            "pickup_leader_state_conflict",
        )

        created = await sim_orders.client.post(
            "/v1/pickup-points", json=point_body(merchant), headers=leader
        )
        assert created.status_code == 201, created.text
        point = created.json()
        assert (point["active"], point["accepting_orders"]) == (True, True)
        public = await sim_orders.client.get("/v1/pickup-points", params={"merchant_id": merchant})
        assert [x["id"] for x in public.json()["items"]] == [point["id"]]
        mine = await _get(sim_orders, "/v1/pickup-points/leaders", leader)
        assert [x["id"] for x in mine["items"]] == [leader_id]

        # Suspended: the point takes no orders, is no longer listed, and its leader cannot act.
        suspended = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/suspend", json={}, headers=staff
        )
        assert suspended.json()["status"] == "suspended"
        public = await sim_orders.client.get("/v1/pickup-points", params={"merchant_id": merchant})
        assert public.json()["items"] == []
        as_staff = await _get(sim_orders, f"/v1/pickup-points?merchant_id={merchant}", staff)
        assert [x["accepting_orders"] for x in as_staff["items"]] == [False]
        listed = await sim_orders.client.get(
            f"/v1/pickup-points/{point['id']}/pick-list", headers=leader
        )
        assert (listed.status_code, listed.json()["code"]) == (403, "pickup_leader_required")
        reinstated = await sim_orders.client.post(
            f"/v1/pickup-points/leaders/{leader_id}/approve", json={}, headers=staff
        )
        assert reinstated.json()["status"] == "active"

    async def test_a_leader_takes_their_point_out_of_service_and_back(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        staff = auth("staff", merchant_id=merchant)
        leader, point = await pickup_point(sim_orders, auth, merchant, staff)
        change = point_body(merchant, name="Gate 2", active=False)
        change.pop("merchant_id")
        updated = await sim_orders.client.put(
            f"/v1/pickup-points/{point['id']}", json=change, headers=leader
        )
        assert updated.status_code == 200, updated.text
        assert (updated.json()["name"], updated.json()["accepting_orders"]) == ("Gate 2", False)
        hidden = await sim_orders.client.get(f"/v1/pickup-points/{point['id']}")
        assert (hidden.status_code, hidden.json()["code"]) == (404, "pickup_point_not_found")
        assert (await _get(sim_orders, f"/v1/pickup-points/{point['id']}", leader))["id"]
        other_leader, _ = await approved_leader(sim_orders, auth, merchant, staff)
        foreign = await sim_orders.client.put(
            f"/v1/pickup-points/{point['id']}",
            json={**change, "active": True},
            headers=other_leader,
        )
        assert (foreign.status_code, foreign.json()["code"]) == (404, "pickup_point_not_found")
        back = await sim_orders.client.put(
            f"/v1/pickup-points/{point['id']}", json={**change, "active": True}, headers=staff
        )
        assert back.json()["accepting_orders"] is True


class TestOrdering:
    async def test_an_order_to_an_active_point_gets_a_code_and_its_events_carry_the_leader(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, _, leader, point = await _setup(sim_orders, auth)
        buyer = auth("customer")
        placed = await _pickup_order(sim_orders, buyer, campaign_id, point["id"])
        assert placed["status"] == "paid"
        assert placed["pickup_point_id"] == point["id"]
        assert len(placed["pickup_code"]) == 6
        assert placed["delivery_address"] is None
        (paid,) = await order_events(sim_orders, placed["id"])
        assert paid["pickup_point_id"] == point["id"]
        leader_rows = await _get(sim_orders, "/v1/pickup-points/leaders", leader)
        assert paid["pickup_leader_id"] == leader_rows["items"][0]["user_id"]
        # Another customer's order at the same point gets another code; an address order none.
        second = await _pickup_order(sim_orders, auth("customer"), campaign_id, point["id"])
        assert second["pickup_code"] != placed["pickup_code"]
        shipped = await order(sim_orders, buyer, campaign_id, delivery_address=address())
        assert shipped.json()["delivery_address"] == address()
        (event,) = await order_events(sim_orders, shipped.json()["id"])
        assert (event["pickup_point_id"], event["pickup_leader_id"]) == (None, None)

    @pytest.mark.parametrize(
        ("case", "code"),
        [
            ("inactive", "pickup_point_inactive"),
            ("suspended_leader", "pickup_point_inactive"),
            ("other_merchant", "pickup_point_unknown"),
            ("unknown", "pickup_point_unknown"),
            ("with_address", "order_destination_conflict"),
        ],
    )
    async def test_an_order_to_a_point_it_cannot_go_to_is_refused_and_reserves_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory, case: str, code: str
    ) -> None:
        campaign_id, staff, leader, point = await _setup(sim_orders, auth)
        point_id = point["id"]
        extra: dict[str, Any] = {}
        if case == "inactive":
            change = {**point_body(""), "active": False}
            change.pop("merchant_id")
            await sim_orders.client.put(
                f"/v1/pickup-points/{point_id}", json=change, headers=leader
            )
        elif case == "suspended_leader":
            await sim_orders.client.post(
                f"/v1/pickup-points/leaders/{point['leader_id']}/suspend", json={}, headers=staff
            )
        elif case == "other_merchant":
            other = new_merchant()
            _, foreign = await pickup_point(
                sim_orders, auth, other, auth("staff", merchant_id=other)
            )
            point_id = foreign["id"]
        elif case == "unknown":
            point_id = str(uuid.uuid4())
        else:
            extra = {"delivery_address": address()}
        refused = await order(
            sim_orders, auth("customer"), campaign_id, pickup_point_id=point_id, **extra
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert (refused.json()["code"], refused.json()["field"]) == (code, "pickup_point_id")
        campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
        assert campaign["reserved_quantity"] == 0


class TestPickList:
    async def test_the_pick_list_has_units_per_variant_and_codes_and_nothing_of_payments(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff, leader, point = await _setup(sim_orders, auth)
        alice, bob = auth("customer"), auth("customer")
        a1 = await _pickup_order(sim_orders, alice, campaign_id, point["id"], quantity=2)
        a2 = await _pickup_order(sim_orders, alice, campaign_id, point["id"], sku="M")
        b1 = await _pickup_order(sim_orders, bob, campaign_id, point["id"], quantity=3)
        unpaid = await _pickup_order(sim_orders, bob, campaign_id, point["id"], payment_method=None)
        assert unpaid["status"] == "pending_payment"

        for who in (leader, staff):
            listed = await _get(sim_orders, f"/v1/pickup-points/{point['id']}/pick-list", who)
            variants = {
                v["sku"]: (v["name"], v["quantity"], v["orders"]) for v in listed["variants"]
            }
            assert variants == {"S": ("Small", 5, 2), "M": ("Medium", 1, 1)}
            codes = {o["order_id"]: o["pickup_code"] for o in listed["orders"]}
            assert codes == {x["id"]: x["pickup_code"] for x in (a1, a2, b1)}
            assert {o["state"] for o in listed["orders"]} == {"awaiting_arrival"}
            for row in listed["orders"]:
                assert "***" in row["customer"]
                assert set(row) == {
                    "order_id",
                    "campaign_id",
                    "customer",
                    "sku",
                    "quantity",
                    "pickup_code",
                    "state",
                    "arrived_at",
                    "picked_up_at",
                }
            text = str(listed)
            assert a1["customer_id"] not in text
            assert "paid" not in text  # no amount, no payment, no order state
        other_campaign = await _get(
            sim_orders,
            f"/v1/pickup-points/{point['id']}/pick-list?campaign_id={uuid.uuid4()}",
            leader,
        )
        assert (other_campaign["variants"], other_campaign["orders"]) == ([], [])

        other_leader, _ = await approved_leader(
            sim_orders, auth, await merchant_of(sim_orders, campaign_id, staff), staff
        )
        for outsider in (other_leader, alice, auth("staff", merchant_id=new_merchant())):
            refused = await sim_orders.client.get(
                f"/v1/pickup-points/{point['id']}/pick-list", headers=outsider
            )
            assert (refused.status_code, refused.json()["code"]) == (404, "pickup_point_not_found")


class TestPickups:
    async def test_a_batch_arrives_and_each_order_is_handed_over_once_against_its_code(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff, leader, point = await _setup(sim_orders, auth)
        merchant = await merchant_of(sim_orders, campaign_id, staff)
        other_leader, other_point = await pickup_point(sim_orders, auth, merchant, staff)
        buyer = auth("customer")
        mine = await _pickup_order(sim_orders, buyer, campaign_id, point["id"])
        elsewhere = await _pickup_order(
            sim_orders, auth("customer"), campaign_id, other_point["id"]
        )
        arrivals = f"/v1/pickup-points/{point['id']}/arrivals"
        pickups = f"/v1/pickup-points/{point['id']}/pickups"

        early = await sim_orders.client.post(
            arrivals, json={"campaign_id": campaign_id}, headers=leader
        )
        assert (early.status_code, early.json()["code"]) == (409, "presale_state_conflict")
        not_yet = await sim_orders.client.post(
            pickups, json={"code": mine["pickup_code"]}, headers=leader
        )
        assert (not_yet.status_code, not_yet.json()["code"]) == (409, "pickup_not_ready")

        await make_due(sim_orders, campaign_id, what="close")
        await run_jobs(sim_orders)
        arrived = await sim_orders.client.post(
            arrivals, json={"campaign_id": campaign_id}, headers=leader
        )
        assert arrived.status_code == 200, arrived.text
        assert arrived.json()["arrived"] == 1  # this point's order only
        again = await sim_orders.client.post(
            arrivals, json={"campaign_id": campaign_id}, headers=staff
        )
        assert again.json()["arrived"] == 0
        order_now = await _get(sim_orders, f"/v1/orders/{mine['id']}", buyer)
        assert order_now["status"] == "shipped"
        untouched = await _get(sim_orders, f"/v1/orders/{elsewhere['id']}", staff)
        assert untouched["status"] == "paid"

        wrong = "222222" if mine["pickup_code"] != "222222" else "333333"
        for code in (wrong, elsewhere["pickup_code"]):
            refused = await sim_orders.client.post(pickups, json={"code": code}, headers=leader)
            assert (refused.status_code, refused.json()["code"]) == (422, "pickup_code_invalid")
        foreign = await sim_orders.client.post(
            pickups, json={"code": mine["pickup_code"]}, headers=other_leader
        )
        assert (foreign.status_code, foreign.json()["code"]) == (404, "pickup_point_not_found")
        assert (await _get(sim_orders, f"/v1/orders/{mine['id']}", buyer))["status"] == "shipped"

        handed = await sim_orders.client.post(
            pickups, json={"code": mine["pickup_code"].lower()}, headers=leader
        )
        assert handed.status_code == 200, handed.text
        assert (handed.json()["order_id"], handed.json()["state"]) == (mine["id"], "picked_up")
        twice = await sim_orders.client.post(
            pickups, json={"code": mine["pickup_code"]}, headers=leader
        )
        assert (twice.status_code, twice.json()["code"]) == (409, "pickup_already_collected")
        done = await _get(sim_orders, f"/v1/orders/{mine['id']}", buyer)
        assert done["status"] == "delivered"
        assert done["delivered_at"] is not None
        listed = await _get(sim_orders, f"/v1/pickup-points/{point['id']}/pick-list", leader)
        assert listed["orders"] == []

    async def test_one_code_handed_over_at_once_by_several_is_handed_over_once(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff, leader, point = await _setup(sim_orders, auth)
        placed = await _pickup_order(sim_orders, auth("customer"), campaign_id, point["id"])
        await make_due(sim_orders, campaign_id, what="close")
        await run_jobs(sim_orders)
        await sim_orders.client.post(
            f"/v1/pickup-points/{point['id']}/arrivals",
            json={"campaign_id": campaign_id},
            headers=staff,
        )
        answers = await asyncio.gather(
            *(
                sim_orders.client.post(
                    f"/v1/pickup-points/{point['id']}/pickups",
                    json={"code": placed["pickup_code"]},
                    headers=who,
                )
                for who in (leader, staff) * 4
            )
        )
        codes = [a.status_code for a in answers]
        assert codes.count(200) == 1, codes
        assert {a.json()["code"] for a in answers if a.status_code != 200} == {
            "pickup_already_collected"
        }


class TestBadInput:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"name": "x" * 101},
            {"name": ""},
            {"name": "Gate\x00"},
            {"address": "a" * 301},
            {"contact_phone": "call me"},
            {"opening_hours": "h" * 201},
            {"opening_hours": "9-5\n"},
            {"active": "yes"},
            {"unexpected": 1},
        ],
    )
    async def test_a_bad_point_is_refused_and_registers_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory, overrides: dict[str, Any]
    ) -> None:
        merchant = new_merchant()
        staff = auth("staff", merchant_id=merchant)
        leader, _ = await approved_leader(sim_orders, auth, merchant, staff)
        refused = await sim_orders.client.post(
            "/v1/pickup-points", json=point_body(merchant, **overrides), headers=leader
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "validation_error"
        listed = await _get(sim_orders, f"/v1/pickup-points?merchant_id={merchant}", staff)
        assert listed["items"] == []

    @pytest.mark.parametrize("code", ["", "abc", "ABCDEFGHI", "AB-123", "AB\x00123"])
    async def test_a_malformed_code_is_refused(
        self, sim_orders: PaymentsApp, auth: TokenFactory, code: str
    ) -> None:
        merchant = new_merchant()
        staff = auth("staff", merchant_id=merchant)
        leader, point = await pickup_point(sim_orders, auth, merchant, staff)
        refused = await sim_orders.client.post(
            f"/v1/pickup-points/{point['id']}/pickups", json={"code": code}, headers=leader
        )
        assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
