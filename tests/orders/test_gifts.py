"""Gift orders (送人) on real PostgreSQL with the simulated provider: the claim link once
paid, claiming with the recipient's own address, what the buyer may and may not see, claims
twice, by the buyer and by many at once, shipping only once claimed, and the unclaimed gift
redirected or refunded by its job, once, however many workers run it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.orders.gifts.service import UNCLAIMED_JOB
from shared.scheduler import Job, JobRunner
from tests.conftest import TokenFactory
from tests.orders.gifts_support import (
    address,
    claim,
    claim_token,
    gift_order,
    gift_view,
    leaked_token,
    make_gift_due,
)
from tests.orders.pickup_support import merchant_of, pickup_point
from tests.orders.presale_support import (
    make_due,
    open_campaign,
    order,
    order_event_types,
    order_events,
    order_refunds,
    run_jobs,
)
from tests.shared.payments.support import PaymentsApp, new_merchant

FULL = {"min_quantity": 1, "deposit": {"type": "full"}}


async def _get(app: PaymentsApp, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _succeed(app: PaymentsApp, campaign_id: str) -> None:
    await make_due(app, campaign_id, what="close")
    await run_jobs(app)


class TestClaiming:
    async def test_a_paid_gift_gives_its_buyer_a_link_and_the_recipient_claims_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer, recipient = auth("customer"), auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id, quantity=2)
        assert placed["status"] == "paid"
        assert placed["delivery_address"] is None
        mine = await gift_view(sim_orders, buyer, placed["id"])
        assert mine["status"] == "awaiting_claim"
        assert mine["claim_url"].startswith("https://qunbuy.example/gift?token=")
        claim_by = datetime.fromisoformat(mine["claim_by"])
        expected = datetime.now(UTC) + timedelta(days=7)
        assert abs(claim_by - expected) < timedelta(minutes=1)
        token = await claim_token(sim_orders, buyer, placed["id"])

        preview = await sim_orders.client.post(
            "/v1/orders/gift-claims/preview", json={"token": token}, headers=recipient
        )
        assert preview.status_code == 200, preview.text
        assert preview.json()["message"] == "生日快乐! From Han Meimei"
        assert (preview.json()["sku"], preview.json()["quantity"]) == ("S", 2)
        assert preview.json()["claimable"] is True

        claimed = await claim(sim_orders, recipient, token, name="Zhang Wei")
        assert claimed.status_code == 201, claimed.text
        assert claimed.json()["status"] == "claimed"
        assert claimed.json()["ship_to"]["recipient_name"] == "Zhang Wei"

        # The buyer sees that it was claimed, never by whom or where it goes.
        seen = await sim_orders.client.get(f"/v1/orders/{placed['id']}/gift", headers=buyer)
        assert seen.json()["claimed"] is True
        assert seen.json()["claim_url"] is None
        assert (seen.json()["ship_to"], seen.json()["recipient_id"]) == (None, None)
        as_order = await sim_orders.client.get(f"/v1/orders/{placed['id']}", headers=buyer)
        for text in (seen.text, as_order.text):
            assert "Zhang Wei" not in text
            assert "Huaihai" not in text
        # Staff see what they ship to, and to whom.
        for_staff = await gift_view(sim_orders, staff, placed["id"])
        assert for_staff["ship_to"]["recipient_name"] == "Zhang Wei"
        assert for_staff["recipient_id"] is not None
        # Anyone else learns nothing.
        stranger = await sim_orders.client.get(
            f"/v1/orders/{placed['id']}/gift", headers=auth("customer")
        )
        assert (stranger.status_code, stranger.json()["code"]) == (404, "gift_not_found")
        hidden = await sim_orders.client.get(f"/v1/orders/{placed['id']}", headers=recipient)
        assert hidden.status_code == 404  # the recipient never sees the order's payments

    async def test_an_unpaid_gift_has_no_link_and_cannot_be_claimed(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, _ = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id, payment_method=None)
        assert placed["status"] == "pending_payment"
        mine = await gift_view(sim_orders, buyer, placed["id"])
        assert mine["claim_url"] is None
        # A token that leaked before payment still claims nothing.
        token = await leaked_token(sim_orders, placed["id"])
        refused = await claim(sim_orders, auth("customer"), token)
        assert (refused.status_code, refused.json()["code"]) == (409, "gift_not_claimable")
        assert (await gift_view(sim_orders, buyer, placed["id"]))["status"] == "awaiting_claim"

    async def test_a_gift_claimed_twice_or_by_its_buyer_is_refused_and_changes_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer, first, second = auth("customer"), auth("customer"), auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id)
        token = await claim_token(sim_orders, buyer, placed["id"])

        own = await claim(sim_orders, buyer, token)
        assert own.status_code == 403
        assert own.headers["content-type"].startswith("application/problem+json")
        assert own.json()["code"] == "gift_claim_by_buyer"
        assert (await gift_view(sim_orders, staff, placed["id"]))["status"] == "awaiting_claim"

        assert (await claim(sim_orders, first, token, name="First")).status_code == 201
        for who in (first, second, buyer):
            again = await claim(sim_orders, who, token, name="Again")
            assert (again.status_code, again.json()["code"]) == (409, "gift_already_claimed")
        kept = await gift_view(sim_orders, staff, placed["id"])
        assert kept["ship_to"]["recipient_name"] == "First"

    async def test_of_ten_people_claiming_one_gift_at_once_exactly_one_gets_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id)
        token = await claim_token(sim_orders, buyer, placed["id"])
        claimers = [auth("customer") for _ in range(10)]
        answers = await asyncio.gather(
            *(claim(sim_orders, who, token, name=f"Claimer {i}") for i, who in enumerate(claimers))
        )
        codes = [a.status_code for a in answers]
        assert codes.count(201) == 1, codes
        assert {a.json()["code"] for a in answers if a.status_code != 201} == {
            "gift_already_claimed"
        }
        winner = codes.index(201)
        kept = await gift_view(sim_orders, staff, placed["id"])
        assert kept["ship_to"]["recipient_name"] == f"Claimer {winner}"
        assert (await gift_view(sim_orders, claimers[winner], placed["id"]))["claimed"] is True


class TestShipping:
    async def test_a_gift_ships_once_claimed_and_its_buyer_follows_it_without_the_address(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer, recipient = auth("customer"), auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id)
        await _succeed(sim_orders, campaign_id)
        ship = {"carrier": "SF Express", "tracking_number": "SF1234567890"}
        early = await sim_orders.client.post(
            f"/v1/orders/{placed['id']}/ship", json=ship, headers=staff
        )
        assert (early.status_code, early.json()["code"]) == (409, "gift_awaiting_claim")
        assert (await gift_view(sim_orders, buyer, placed["id"]))["order_status"] == "paid"

        token = await claim_token(sim_orders, buyer, placed["id"])
        assert (await claim(sim_orders, recipient, token)).status_code == 201
        shipped = await sim_orders.client.post(
            f"/v1/orders/{placed['id']}/ship", json=ship, headers=staff
        )
        assert shipped.status_code == 200, shipped.text
        mine = await gift_view(sim_orders, buyer, placed["id"])
        assert mine["order_status"] == "shipped"
        assert mine["shipped_at"] is not None
        assert (mine["tracking_number"], mine["ship_to"]) == ("SF1234567890", None)
        theirs = await gift_view(sim_orders, recipient, placed["id"])
        assert theirs["tracking_number"] == "SF1234567890"
        assert theirs["ship_to"] == address()
        delivered = await sim_orders.client.post(
            f"/v1/orders/{placed['id']}/deliver", headers=staff
        )
        assert delivered.status_code == 200, delivered.text
        mine = await gift_view(sim_orders, buyer, placed["id"])
        assert (mine["order_status"], mine["claimed"]) == ("delivered", True)
        assert mine["delivered_at"] is not None


class TestUnclaimed:
    async def test_an_unclaimed_gift_is_refunded_when_the_merchant_chose_refund(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id, delivery_address=address())
        token = await claim_token(sim_orders, buyer, placed["id"])
        await run_jobs(sim_orders)
        assert (await gift_view(sim_orders, buyer, placed["id"]))["status"] == "awaiting_claim"
        await make_gift_due(sim_orders, placed["id"])
        await run_jobs(sim_orders)
        await sim_orders.tick()

        mine = await _get(sim_orders, f"/v1/orders/{placed['id']}", buyer)
        assert (mine["status"], mine["cancel_reason"]) == ("cancelled", "gift_unclaimed")
        assert mine["refunded_total"] == mine["paid_total"] == 12900
        assert await order_refunds(sim_orders, placed["id"]) == [12900]
        assert (await gift_view(sim_orders, buyer, placed["id"]))["status"] == "refunded"
        assert await order_event_types(sim_orders, placed["id"]) == [
            "order.paid",
            "order.cancelled",
            "order.refunded",
        ]
        cancelled = (await order_events(sim_orders, placed["id"]))[1]
        assert cancelled["reason"] == "gift_unclaimed"
        late = await claim(sim_orders, auth("customer"), token)
        assert (late.status_code, late.json()["code"]) == (409, "gift_not_claimable")
        campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
        assert campaign["reserved_quantity"] == 0

    async def test_an_unclaimed_gift_goes_to_its_buyer_when_the_merchant_chose_redirect(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        before = await gift_order(sim_orders, buyer, campaign_id, delivery_address=address())
        policy = await sim_orders.client.put(
            "/v1/orders/gift-policy",
            json={"claim_days": 3, "on_unclaimed": "redirect"},
            headers=staff,
        )
        assert policy.status_code == 200, policy.text
        placed = await gift_order(
            sim_orders, buyer, campaign_id, delivery_address=address("Han Meimei")
        )
        no_address = await gift_order(sim_orders, buyer, campaign_id)
        mine = await gift_view(sim_orders, buyer, placed["id"])
        assert mine["on_unclaimed"] == "redirect"
        claim_by = datetime.fromisoformat(mine["claim_by"])
        assert abs(claim_by - (datetime.now(UTC) + timedelta(days=3))) < timedelta(minutes=1)
        # A gift keeps the terms it was ordered on.
        assert (await gift_view(sim_orders, buyer, before["id"]))["on_unclaimed"] == "refund"

        for gift in (before, placed, no_address):
            await make_gift_due(sim_orders, gift["id"])
        await run_jobs(sim_orders)
        await sim_orders.tick()

        redirected = await gift_view(sim_orders, buyer, placed["id"])
        assert redirected["status"] == "redirected"
        assert redirected["ship_to"]["recipient_name"] == "Han Meimei"
        assert redirected["order_status"] == "paid"
        # Without an address of the buyer's there is nowhere to redirect to: refunded.
        refunded = await _get(sim_orders, f"/v1/orders/{no_address['id']}", buyer)
        assert (refunded["status"], refunded["refunded_total"]) == ("cancelled", 12900)
        assert (await gift_view(sim_orders, buyer, before["id"]))["status"] == "refunded"
        await _succeed(sim_orders, campaign_id)
        shipped = await sim_orders.client.post(
            f"/v1/orders/{placed['id']}/ship",
            json={"carrier": "SF Express", "tracking_number": "SF1"},
            headers=staff,
        )
        assert shipped.status_code == 200, shipped.text

    async def test_two_workers_and_a_rerun_resolving_one_unclaimed_gift_refund_it_once(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        campaign_id, _ = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id)
        await make_gift_due(sim_orders, placed["id"])
        runners = [
            JobRunner(
                sessionmaker=sim_orders.app.state.sessionmaker,
                tables=sim_orders.app.state.tables,
                handlers=sim_orders.app.state.job_handlers,
            )
            for _ in range(2)
        ]
        await asyncio.gather(*(r.run_due() for r in runners))
        # A handler run again (a worker whose lease lapsed) finds the gift resolved.
        handler = sim_orders.app.state.job_handlers[UNCLAIMED_JOB]
        again = Job(0, UNCLAIMED_JOB, placed["id"], datetime.now(UTC), {}, 1)
        async with sim_orders.app.state.sessionmaker() as session, session.begin():
            await handler(session, again)
        await run_jobs(sim_orders)
        await sim_orders.tick()
        assert await order_refunds(sim_orders, placed["id"]) == [12900]
        types = await order_event_types(sim_orders, placed["id"])
        assert types.count("order.cancelled") == 1


class TestBadInput:
    @pytest.mark.parametrize(
        ("extra", "code"),
        [
            ({"gift": {"message": "x" * 201}}, "validation_error"),
            ({"gift": {"message": ""}}, "validation_error"),
            ({"gift": {"message": "hi\x00"}}, "validation_error"),
            ({"gift": {"message": "hi", "from": "me"}}, "validation_error"),
            ({"gift": {"message": "hi"}, "pickup_point_id": "POINT"}, "order_destination_conflict"),
        ],
    )
    async def test_a_bad_gift_order_is_refused_and_reserves_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory, extra: dict[str, Any], code: str
    ) -> None:
        campaign_id, staff = await open_campaign(sim_orders, auth, **FULL)
        if extra.get("pickup_point_id") == "POINT":
            merchant = await merchant_of(sim_orders, campaign_id, staff)
            _, point = await pickup_point(sim_orders, auth, merchant, staff)
            extra = {**extra, "pickup_point_id": point["id"]}
        refused = await order(sim_orders, auth("customer"), campaign_id, **extra)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == code
        campaign = await _get(sim_orders, f"/v1/presales/{campaign_id}", staff)
        assert campaign["reserved_quantity"] == 0

    @pytest.mark.parametrize(
        "overrides",
        [
            {"phone": "call me"},
            {"lines": []},
            {"lines": ["a"] * 5},
            {"lines": ["x" * 201]},
            {"recipient_name": "Li\x00Lei"},
            {"recipient_name": ""},
            {"postal_code": "1" * 21},
        ],
    )
    async def test_a_claim_with_a_bad_address_is_refused_and_the_gift_stays_unclaimed(
        self, sim_orders: PaymentsApp, auth: TokenFactory, overrides: dict[str, Any]
    ) -> None:
        campaign_id, _ = await open_campaign(sim_orders, auth, **FULL)
        buyer = auth("customer")
        placed = await gift_order(sim_orders, buyer, campaign_id)
        token = await claim_token(sim_orders, buyer, placed["id"])
        refused = await claim(sim_orders, auth("customer"), token, **overrides)
        assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
        assert refused.json()["errors"][0]["path"].startswith("body.address")
        assert (await gift_view(sim_orders, buyer, placed["id"]))["status"] == "awaiting_claim"

    async def test_an_unknown_or_malformed_token_claims_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        who = auth("customer")
        unknown = await claim(sim_orders, who, "A" * 43)
        assert (unknown.status_code, unknown.json()["code"]) == (404, "gift_not_found")
        for bad in ("short", "A" * 65, "A" * 42 + "\x00", "A" * 40 + "/.."):
            malformed = await claim(sim_orders, who, bad)
            assert (malformed.status_code, malformed.json()["code"]) == (422, "validation_error")
        nobody = await sim_orders.client.post(
            "/v1/orders/gift-claims", json={"token": "A" * 43, "address": address()}
        )
        assert (nobody.status_code, nobody.json()["code"]) == (401, "missing_token")

    async def test_the_gift_terms_are_the_merchants_staffs_and_bounded(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        staff = auth("staff", merchant_id=merchant)
        default = await _get(sim_orders, "/v1/orders/gift-policy", staff)
        assert (default["claim_days"], default["on_unclaimed"]) == (7, "refund")
        for body in (
            {"claim_days": 0, "on_unclaimed": "refund"},
            {"claim_days": 91, "on_unclaimed": "refund"},
            {"claim_days": 3, "on_unclaimed": "keep"},
            {"claim_days": "3", "on_unclaimed": "refund"},
        ):
            bad = await sim_orders.client.put("/v1/orders/gift-policy", json=body, headers=staff)
            assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")
        customer = await sim_orders.client.put(
            "/v1/orders/gift-policy",
            json={"claim_days": 3, "on_unclaimed": "redirect"},
            headers=auth("customer"),
        )
        assert (customer.status_code, customer.json()["code"]) == (403, "role_required")
        other = await sim_orders.client.put(
            "/v1/orders/gift-policy",
            params={"merchant_id": new_merchant()},
            json={"claim_days": 3, "on_unclaimed": "redirect"},
            headers=staff,
        )
        assert (other.status_code, other.json()["code"]) == (403, "other_merchant")
        unchanged = await _get(sim_orders, "/v1/orders/gift-policy", staff)
        assert unchanged == default
