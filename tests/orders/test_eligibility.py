"""Eligibility on real PostgreSQL: member tiers (limits and prices, set by staff or by an
event), purchase codes (issued, redeemed, used once, given back), and bad input refused with a
stable code and nothing changed."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from services.orders.models import customer_order
from shared.events import SIGNATURE_HEADER, Envelope, sign
from shared.events.contracts import MemberTierSet
from tests.conftest import TEST_EVENT_SECRET, TokenFactory
from tests.orders.eligibility_support import (
    Merchant,
    code_rows,
    customer,
    expire_codes,
    merchant,
)
from tests.orders.presale_support import make_due, order, run_jobs
from tests.shared.payments.support import PaymentsApp


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


async def _reserved(shop: Merchant, campaign_id: str) -> int:
    campaign = await shop.get(f"/v1/presales/{campaign_id}")
    return int(campaign["reserved_quantity"])


async def _orders_of(app: PaymentsApp, campaign_id: str) -> int:
    o = customer_order
    async with app.app.state.sessionmaker() as session:
        n = await session.scalar(
            select(func.count()).where(o.c.campaign_id == uuid.UUID(campaign_id))
        )
        return int(n or 0)


class TestMemberTiers:
    async def test_tiers_are_the_merchants_own_and_one_still_held_cannot_go(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        listed = await shop.get("/v1/presales/member-tiers")
        assert [t["code"] for t in listed["tiers"]] == ["gold", "silver", "normal"]
        other = merchant(sim_orders, auth)
        assert (await other.get("/v1/presales/member-tiers"))["tiers"] == []
        buyer, _ = customer(auth)
        await shop.member(buyer, "gold")
        member = await shop.get(f"/v1/presales/members/{buyer}")
        assert member["tier_code"] == "gold"
        # Another merchant's staff see no tier for the same customer.
        assert (await other.get(f"/v1/presales/members/{buyer}"))["tier_code"] is None

        gone = await sim_orders.client.put(
            "/v1/presales/member-tiers",
            json={"tiers": [{"code": "normal", "name": "普通", "rank": 0}]},
            headers=shop.staff,
        )
        _problem(gone, 409, "member_tier_in_use")
        twice = await sim_orders.client.put(
            "/v1/presales/member-tiers",
            json={"tiers": [{"code": "a", "name": "A", "rank": 0}] * 2},
            headers=shop.staff,
        )
        _problem(twice, 422, "member_tiers_invalid")
        unknown = await sim_orders.client.put(
            f"/v1/presales/members/{buyer}", json={"tier_code": "platinum"}, headers=shop.staff
        )
        _problem(unknown, 422, "member_tier_unknown")
        assert len((await shop.get("/v1/presales/member-tiers"))["tiers"]) == 3
        assert (await shop.get(f"/v1/presales/members/{buyer}"))["tier_code"] == "gold"

        await shop.member(buyer, None)
        renamed = [{**t, "name": t["name"] + "会员"} for t in listed["tiers"][:2]]
        kept = await sim_orders.client.put(
            "/v1/presales/member-tiers", json={"tiers": renamed}, headers=shop.staff
        )
        assert kept.status_code == 200, kept.text
        assert [t["name"] for t in kept.json()["tiers"]] == ["金卡会员", "银卡会员"]

    async def test_a_tiers_campaign_sells_to_listed_tiers_within_their_limits_at_their_prices(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        campaign_id = await shop.campaign(min_quantity=5)
        await shop.set_eligibility(
            campaign_id,
            mode="tiers",
            tiers=[
                {"tier_code": "silver", "per_customer_limit": 2},
                {"tier_code": "gold", "per_customer_limit": 5, "unit_price": 9900},
            ],
        )
        nobody = auth("customer")
        normal, normal_h = customer(auth)
        silver, silver_h = customer(auth)
        gold, gold_h = customer(auth)
        for who, tier in ((normal, "normal"), (silver, "silver"), (gold, "gold")):
            await shop.member(who, tier)

        _problem(await order(sim_orders, nobody, campaign_id), 403, "tier_not_eligible")
        _problem(await order(sim_orders, normal_h, campaign_id), 403, "tier_not_eligible")
        over = await order(sim_orders, silver_h, campaign_id, quantity=3)
        assert _problem(over, 409, "tier_limit_exceeded")["limit"] == 2
        assert await _reserved(shop, campaign_id) == 0
        assert (await order(sim_orders, silver_h, campaign_id, quantity=2)).status_code == 201
        _problem(await order(sim_orders, silver_h, campaign_id), 409, "tier_limit_exceeded")
        placed = await order(sim_orders, gold_h, campaign_id, quantity=3)
        assert placed.status_code == 201, placed.text
        assert placed.json()["member_unit_price"] == 9900

        # At the close (5 units: the first tier, 129) gold pays its 99, silver the tier's 129.
        await make_due(sim_orders, campaign_id, what="close")
        await run_jobs(sim_orders)
        orders = await shop.get(f"/v1/orders?campaign_id={campaign_id}")
        balances = {o["customer_id"]: o["balance_amount"] for o in orders["items"]}
        assert balances == {gold: 3 * 9900 - 3 * 2000, silver: 2 * 12900 - 2 * 2000}

    async def test_an_order_waiting_for_the_campaign_sees_the_eligibility_set_meanwhile(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        """Orders read the eligibility only on a restricted campaign, and learn that from the
        campaign row their reservation locks: an order queued behind a change of eligibility
        must see the change once it commits, not the snapshot its statement started with."""
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        campaign_id = await shop.campaign()
        _, buyer = customer(auth)  # in no tier
        state = sim_orders.app.state

        async def waiting() -> int:
            async with state.sessionmaker() as session:
                n = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )
                return int(n or 0)

        async def until_waiting(n: int) -> None:
            for _ in range(200):
                if await waiting() >= n:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{n} requests never queued on the campaign's lock")

        async with state.sessionmaker() as holder, holder.begin():
            await holder.execute(
                text("SELECT id FROM presale_campaign WHERE id = :id FOR UPDATE"),
                {"id": uuid.UUID(campaign_id)},
            )
            change = asyncio.create_task(
                shop.put_eligibility(campaign_id, mode="tiers", tiers=[{"tier_code": "gold"}])
            )
            await until_waiting(1)
            placing = asyncio.create_task(order(sim_orders, buyer, campaign_id))
            await until_waiting(2)
        assert (await change).status_code == 200
        _problem(await placing, 403, "tier_not_eligible")
        assert await _reserved(shop, campaign_id) == 0
        assert await _orders_of(sim_orders, campaign_id) == 0

    async def test_a_full_prepayment_at_a_member_price_pays_that_price_now(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        campaign_id = await shop.campaign(deposit={"type": "full"})
        await shop.set_eligibility(
            campaign_id, mode="tiers", tiers=[{"tier_code": "gold", "unit_price": 9900}]
        )
        gold, gold_h = customer(auth)
        await shop.member(gold, "gold")
        placed = await order(sim_orders, gold_h, campaign_id, quantity=2)
        assert placed.status_code == 201, placed.text
        assert (placed.json()["first_amount"], placed.json()["paid_total"]) == (19800, 19800)
        # Demoted, the same customer may no longer order.
        await shop.member(gold, "normal")
        _problem(await order(sim_orders, gold_h, campaign_id), 403, "tier_not_eligible")

    async def test_an_event_sets_a_tier_and_an_older_one_never_overrides_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="tiers", tiers=[{"tier_code": "gold"}])
        buyer, buyer_h = customer(auth)
        now = datetime.now(UTC)

        async def deliver(tier: str | None, at: datetime) -> Any:
            payload = MemberTierSet(merchant_id=shop.id, customer_id=buyer, tier_code=tier)
            envelope = Envelope(
                type=payload.event_type,
                source="crm",
                occurred_at=at,
                payload=payload.model_dump(mode="json"),
            )
            body = json.dumps(envelope.model_dump(mode="json")).encode()
            headers = {SIGNATURE_HEADER: sign(TEST_EVENT_SECRET, body)}
            return await sim_orders.client.post("/internal/events", content=body, headers=headers)

        applied = await deliver("gold", now)
        assert (applied.status_code, applied.json()["status"]) == (200, "applied")
        assert (await order(sim_orders, buyer_h, campaign_id)).status_code == 201
        late = await deliver("normal", now - timedelta(minutes=5))
        assert late.json()["status"] == "applied"
        member = await shop.get(f"/v1/presales/members/{buyer}")
        assert (member["tier_code"], member["set_by"]) == ("gold", "crm")
        _problem(await deliver("platinum", now + timedelta(minutes=1)), 422, "member_tier_unknown")
        assert (await shop.get(f"/v1/presales/members/{buyer}"))["tier_code"] == "gold"
        assert (await deliver(None, now + timedelta(minutes=2))).json()["status"] == "applied"
        _problem(await order(sim_orders, buyer_h, campaign_id), 403, "tier_not_eligible")


class TestPurchaseCodes:
    async def test_fifty_concurrent_redemptions_of_one_code_bind_it_to_exactly_one_customer(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code")
        (issued,) = await shop.codes(campaign_id, count=1)
        buyers = [customer(auth) for _ in range(50)]

        responses = await asyncio.gather(
            *(
                sim_orders.client.post(
                    f"/v1/presales/{campaign_id}/purchase-codes/redeem",
                    json={"code": issued["code"]},
                    headers=headers,
                )
                for _, headers in buyers
            )
        )
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 1, codes
        assert {r.json()["code"] for r in responses if r.status_code != 200} == {
            "purchase_code_taken"
        }
        winner = next(r.json() for r in responses if r.status_code == 200)
        (row,) = await code_rows(sim_orders, campaign_id)
        assert (row["status"], row["customer_id"]) == ("redeemed", winner["customer_id"])
        # The code never moves: the winner's next order takes it without being told which.
        winner_headers = next(h for sub, h in buyers if sub == winner["customer_id"])
        loser_headers = next(h for sub, h in buyers if sub != winner["customer_id"])
        _problem(
            await order(sim_orders, loser_headers, campaign_id, purchase_code=issued["code"]),
            409,
            "purchase_code_taken",
        )
        placed = await order(sim_orders, winner_headers, campaign_id)
        assert placed.status_code == 201, placed.text
        (row,) = await code_rows(sim_orders, campaign_id)
        assert (row["status"], str(row["order_id"])) == ("used", placed.json()["id"])

    async def test_a_code_campaign_sells_once_per_code_and_refuses_everything_else(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        other_campaign = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code", units_per_code=2)
        first, second = await shop.codes(campaign_id, count=2)
        (foreign,) = await shop.codes(other_campaign, count=1)
        buyer, buyer_h = customer(auth)
        _problem(await order(sim_orders, buyer_h, campaign_id), 403, "purchase_code_required")
        for bad, code in [
            ("not-a-code", "purchase_code_invalid"),
            ("AAAA-AAAA-AAAA-AAAA", "purchase_code_invalid"),
            (foreign["code"], "purchase_code_invalid"),
        ]:
            refused = await order(sim_orders, buyer_h, campaign_id, purchase_code=bad)
            assert _problem(refused, 422, code)["field"] == "purchase_code"
        too_many = await order(
            sim_orders, buyer_h, campaign_id, quantity=3, purchase_code=first["code"]
        )
        _problem(too_many, 422, "purchase_code_units_exceeded")
        assert await _reserved(shop, campaign_id) == 0
        assert {r["status"] for r in await code_rows(sim_orders, campaign_id)} == {"issued"}

        # Typed in lower case with spaces, the code still buys (and is bound by buying).
        typed = first["code"].lower().replace("-", " ")
        placed = await order(sim_orders, buyer_h, campaign_id, quantity=2, purchase_code=typed)
        assert placed.status_code == 201, placed.text
        again = await order(sim_orders, buyer_h, campaign_id, purchase_code=first["code"])
        _problem(again, 409, "purchase_code_used")
        redeemed = await sim_orders.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes/redeem",
            json={"code": first["code"]},
            headers=auth("customer"),
        )
        _problem(redeemed, 409, "purchase_code_taken")
        assert await _reserved(shop, campaign_id) == 2
        listed = await shop.get(f"/v1/presales/{campaign_id}/purchase-codes")
        by_id = {c["id"]: c for c in listed["items"]}
        assert by_id[first["id"]]["status"] == "used"
        assert by_id[first["id"]]["customer_id"] == buyer
        assert by_id[first["id"]]["hint"] == first["code"][-4:]
        assert by_id[second["id"]]["status"] == "issued"
        assert "code" not in by_id[second["id"]]

    async def test_concurrent_orders_with_one_code_place_one_order(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code")
        (issued,) = await shop.codes(campaign_id, count=1)
        buyers = [customer(auth)[1] for _ in range(5)]
        responses = await asyncio.gather(
            *(
                order(sim_orders, buyers[i % 5], campaign_id, purchase_code=issued["code"])
                for i in range(20)
            )
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(201) == 1, statuses
        assert {r.json()["code"] for r in responses if r.status_code != 201} <= {
            "purchase_code_taken",
            "purchase_code_used",
        }
        assert await _reserved(shop, campaign_id) == 1
        assert await _orders_of(sim_orders, campaign_id) == 1

    async def test_an_expired_code_is_refused_and_changes_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code")
        buyer, buyer_h = customer(auth)
        unbound, _ = await shop.codes(campaign_id, count=2)
        await shop.codes(campaign_id, customer_ids=[buyer])
        await expire_codes(sim_orders, campaign_id)
        redeemed = await sim_orders.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes/redeem",
            json={"code": unbound["code"]},
            headers=buyer_h,
        )
        _problem(redeemed, 422, "purchase_code_expired")
        given = await order(sim_orders, buyer_h, campaign_id, purchase_code=unbound["code"])
        _problem(given, 422, "purchase_code_expired")
        # Their own bound code has expired too: nothing left to order with.
        _problem(await order(sim_orders, buyer_h, campaign_id), 403, "purchase_code_required")
        rows = await code_rows(sim_orders, campaign_id)
        assert {(r["status"], r["order_id"]) for r in rows} == {("issued", None)}
        listed = await shop.get(f"/v1/presales/{campaign_id}/purchase-codes")
        assert {c["status"] for c in listed["items"]} == {"expired"}
        assert await _orders_of(sim_orders, campaign_id) == 0

    async def test_a_bound_code_is_its_customers_alone_and_their_order_takes_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code")
        owner, owner_h = customer(auth)
        (issued,) = await shop.codes(campaign_id, customer_ids=[owner])
        assert issued["customer_id"] == owner
        stranger = auth("customer")
        for attempt in (
            sim_orders.client.post(
                f"/v1/presales/{campaign_id}/purchase-codes/redeem",
                json={"code": issued["code"]},
                headers=stranger,
            ),
            order(sim_orders, stranger, campaign_id, purchase_code=issued["code"]),
        ):
            _problem(await attempt, 409, "purchase_code_taken")
        redeemed = await sim_orders.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes/redeem",
            json={"code": issued["code"]},
            headers=owner_h,
        )
        assert (redeemed.status_code, redeemed.json()["status"]) == (200, "redeemed")
        twice = await sim_orders.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes/redeem",
            json={"code": issued["code"]},
            headers=owner_h,
        )
        assert twice.json() == redeemed.json()
        assert (await order(sim_orders, owner_h, campaign_id)).status_code == 201

    async def test_an_unpaid_order_that_expires_gives_its_code_back_and_a_paid_one_keeps_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="code")
        (issued,) = await shop.codes(campaign_id, count=1)
        buyer, buyer_h = customer(auth)
        unpaid = await order(
            sim_orders, buyer_h, campaign_id, purchase_code=issued["code"], payment_method=None
        )
        assert unpaid.json()["status"] == "pending_payment"
        _problem(await order(sim_orders, buyer_h, campaign_id), 403, "purchase_code_required")
        o = customer_order
        async with sim_orders.app.state.sessionmaker() as session, session.begin():
            await session.execute(
                o.update()
                .where(o.c.id == uuid.UUID(unpaid.json()["id"]))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        await run_jobs(sim_orders)
        (row,) = await code_rows(sim_orders, campaign_id)
        assert (row["status"], row["customer_id"], row["order_id"]) == ("redeemed", buyer, None)
        paid = await order(sim_orders, buyer_h, campaign_id)
        assert (paid.status_code, paid.json()["status"]) == (201, "deposit_paid")
        (row,) = await code_rows(sim_orders, campaign_id)
        assert (row["status"], str(row["order_id"])) == ("used", paid.json()["id"])


class TestEligibilityTerms:
    @pytest.mark.parametrize(
        ("body", "status", "code", "field"),
        [
            ({"mode": "tiers"}, 422, "eligibility_invalid", "tiers"),
            (
                {"mode": "open", "tiers": [{"tier_code": "gold"}]},
                422,
                "eligibility_invalid",
                "tiers",
            ),
            (
                {"mode": "tiers", "tiers": [{"tier_code": "gold"}, {"tier_code": "gold"}]},
                422,
                "eligibility_invalid",
                "tiers",
            ),
            (
                {"mode": "tiers", "tiers": [{"tier_code": "platinum"}]},
                422,
                "member_tier_unknown",
                "tiers.platinum",
            ),
            (
                {"mode": "tiers", "tiers": [{"tier_code": "gold", "unit_price": 1999}]},
                422,
                "eligibility_invalid",
                "tiers.gold.unit_price",
            ),
            (
                {"mode": "tiers", "tiers": [{"tier_code": "gold"}], "reservations": {"places": 5}},
                422,
                "eligibility_invalid",
                "reservations",
            ),
            (
                {"mode": "code", "reservations": {"places": 5}},
                422,
                "eligibility_invalid",
                "reservations",
            ),
            ({"mode": "code", "units_per_code": 0}, 422, "validation_error", None),
            ({"mode": "code", "reservations": {"places": 10**9}}, 422, "validation_error", None),
            ({"mode": "everyone"}, 422, "validation_error", None),
        ],
    )
    async def test_bad_eligibility_is_refused_with_a_code_and_changes_nothing(
        self,
        sim_orders: PaymentsApp,
        auth: TokenFactory,
        body: dict[str, Any],
        status: int,
        code: str,
        field: str | None,
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        campaign_id = await shop.campaign()  # open already: too late for reservations
        refused = _problem(await shop.put_eligibility(campaign_id, **body), status, code)
        if field is not None:
            assert refused["field"] == field
        eligibility = await shop.get(f"/v1/presales/{campaign_id}/eligibility")
        assert (eligibility["mode"], eligibility["tiers"]) == ("open", [])

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"count": 0}, None),
            ({"count": 10_001}, None),
            ({"customer_ids": []}, None),
            ({"customer_ids": ["a\x00b"]}, None),
            ({"count": 2, "customer_ids": ["c1"]}, "count"),
            ({}, "count"),
            ({"count": 2, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
            ({"count": 2, "expires_at": "2030-01-01T00:00:00"}, None),
        ],
    )
    async def test_a_bad_batch_of_codes_is_refused_and_issues_nothing(
        self, sim_orders: PaymentsApp, auth: TokenFactory, body: dict[str, Any], field: str | None
    ) -> None:
        shop = merchant(sim_orders, auth)
        campaign_id = await shop.campaign()
        body.setdefault("expires_at", (datetime.now(UTC) + timedelta(days=1)).isoformat())
        response = await sim_orders.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes", json=body, headers=shop.staff
        )
        if field is None:
            _problem(response, 422, "validation_error")
        else:
            assert _problem(response, 422, "purchase_code_batch_invalid")["field"] == field
        assert await code_rows(sim_orders, campaign_id) == []

    async def test_after_the_first_payment_eligibility_changes_only_in_the_buyers_favour(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        gold, gold_h = customer(auth)
        await shop.member(gold, "gold")
        rules: list[dict[str, Any]] = [
            {"tier_code": "gold", "per_customer_limit": 5, "unit_price": 9900},
            {"tier_code": "silver"},
        ]
        campaign_id = await shop.campaign()
        await shop.set_eligibility(campaign_id, mode="tiers", tiers=rules)
        assert (await order(sim_orders, gold_h, campaign_id)).status_code == 201

        for tiers, field in [
            ([rules[0]], "tiers.silver"),
            ([{**rules[0], "per_customer_limit": 4}, rules[1]], "tiers.gold.per_customer_limit"),
            ([{**rules[0], "unit_price": 10900}, rules[1]], "tiers.gold.unit_price"),
            ([{**rules[0], "unit_price": None}, rules[1]], "tiers.gold.unit_price"),
        ]:
            refused = await shop.put_eligibility(campaign_id, mode="tiers", tiers=tiers)
            assert _problem(refused, 422, "eligibility_terms_locked")["field"] == field
        for mode in ("code", "open"):
            refused = await shop.put_eligibility(campaign_id, mode=mode)
            assert _problem(refused, 422, "eligibility_terms_locked")["field"] == "mode"
        better = [
            {"tier_code": "gold", "per_customer_limit": None, "unit_price": 9500},
            {"tier_code": "silver", "unit_price": 12000},
            {"tier_code": "normal"},
        ]
        changed = await shop.set_eligibility(campaign_id, mode="tiers", tiers=better)
        assert [t["tier_code"] for t in changed["tiers"]] == ["gold", "silver", "normal"]

        coded = await shop.campaign()
        await shop.set_eligibility(coded, mode="code", units_per_code=2)
        (issued,) = await shop.codes(coded, count=1)
        placed = await order(sim_orders, gold_h, coded, purchase_code=issued["code"])
        assert placed.status_code == 201
        cases: list[tuple[dict[str, Any], str]] = [
            ({"mode": "code", "units_per_code": 1}, "units_per_code"),
            ({"mode": "tiers", "tiers": [{"tier_code": "gold"}]}, "mode"),
        ]
        for body, field in cases:
            refused = await shop.put_eligibility(coded, **body)
            assert _problem(refused, 422, "eligibility_terms_locked")["field"] == field
        opened = await shop.set_eligibility(coded, mode="open")
        assert opened["mode"] == "open"
        assert (await order(sim_orders, auth("customer"), coded)).status_code == 201

    async def test_eligibility_is_public_but_a_drafts_and_a_campaigns_codes_are_its_staffs(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        shop = merchant(sim_orders, auth)
        await shop.tiers()
        draft = await shop.campaign(publish=False)
        await shop.set_eligibility(
            draft, mode="tiers", tiers=[{"tier_code": "gold", "unit_price": 9900}]
        )
        hidden = await sim_orders.client.get(f"/v1/presales/{draft}/eligibility")
        _problem(hidden, 404, "presale_not_found")
        await sim_orders.client.post(f"/v1/presales/{draft}/publish", headers=shop.staff)
        public = await sim_orders.client.get(f"/v1/presales/{draft}/eligibility")
        assert public.status_code == 200
        assert public.json()["tiers"] == [
            {"tier_code": "gold", "name": "金卡", "per_customer_limit": None, "unit_price": 9900}
        ]
        stranger = auth("staff", merchant_id="m_other")
        for method, path, body in [
            ("PUT", f"/v1/presales/{draft}/eligibility", {"mode": "open"}),
            (
                "POST",
                f"/v1/presales/{draft}/purchase-codes",
                {"count": 1, "expires_at": "2099-01-01T00:00:00Z"},
            ),
            ("GET", f"/v1/presales/{draft}/purchase-codes", None),
        ]:
            response = await sim_orders.client.request(method, path, json=body, headers=stranger)
            _problem(response, 404, "presale_not_found")
        assert (await shop.get(f"/v1/presales/{draft}/eligibility"))["mode"] == "tiers"
        assert await code_rows(sim_orders, draft) == []
