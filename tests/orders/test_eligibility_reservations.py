"""Reservations (预约) before an opening and their lottery, on real PostgreSQL: one place per
customer, a draw anyone can re-run from its published seed, winners' codes, losers told, and
no entry lost to a draw that runs while customers reserve."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

from tests.conftest import TokenFactory
from tests.orders.eligibility_support import Merchant, customer, make_opening_due, merchant
from tests.orders.presale_support import order, run_jobs
from tests.shared.payments.support import PaymentsApp


async def _reserve(app: PaymentsApp, campaign_id: str, headers: dict[str, str]) -> Any:
    return await app.client.post(f"/v1/presales/{campaign_id}/reservations", headers=headers)


async def _mine(app: PaymentsApp, campaign_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await app.client.get(
        f"/v1/presales/{campaign_id}/reservations/mine", headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _public(app: PaymentsApp, path: str) -> dict[str, Any]:
    response = await app.client.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _entries(app: PaymentsApp, campaign_id: str) -> list[dict[str, Any]]:
    """Every published entry of the draw, page by page (no login)."""
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        response = await app.client.get(f"/v1/presales/{campaign_id}/draw/entries", params=params)
        assert response.status_code == 200, response.text
        entries += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return entries


async def _reserving_campaign(shop: Merchant, places: int) -> str:
    campaign_id = await shop.upcoming()
    await shop.set_eligibility(
        campaign_id, mode="code", reservations={"places": places, "code_valid_hours": 48}
    )
    return campaign_id


async def test_more_reservations_than_places_are_drawn_by_a_lottery_anyone_can_rerun(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    shop = merchant(sim_orders, auth)
    campaign_id = await _reserving_campaign(shop, places=3)
    buyers = [customer(auth) for _ in range(10)]
    made = await asyncio.gather(*(_reserve(sim_orders, campaign_id, h) for _, h in buyers))
    assert [r.status_code for r in made] == [201] * 10
    again = await _reserve(sim_orders, campaign_id, buyers[0][1])
    assert (again.status_code, again.json()["id"]) == (200, made[0].json()["id"])
    before = await _public(sim_orders, f"/v1/presales/{campaign_id}/draw")
    assert (before["status"], before["entries"], before["seed"]) == ("pending", 10, None)
    commitment = before["commitment"]
    assert await _entries(sim_orders, campaign_id) == []

    drawn = await sim_orders.client.post(f"/v1/presales/{campaign_id}/draw", headers=shop.staff)
    assert drawn.status_code == 200, drawn.text
    record = drawn.json()
    assert (record["status"], record["entries"], record["winners"]) == ("drawn", 10, 3)
    assert record["commitment"] == commitment
    # Anyone can check: the seed is the one committed to, and it alone ranks the entries.
    seed = record["seed"]
    assert hashlib.sha256(seed.encode()).hexdigest() == commitment
    entries = await _entries(sim_orders, campaign_id)
    ids = sorted(e["reservation_id"] for e in entries)
    assert ids == sorted(r.json()["id"] for r in made)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert record["digest"] == digest
    tickets = {i: hmac.new(seed.encode(), i.encode(), hashlib.sha256).hexdigest() for i in ids}
    rerun = sorted(ids, key=lambda i: (tickets[i], i))
    assert [e["reservation_id"] for e in entries] == rerun
    assert [e["rank"] for e in entries] == list(range(1, 11))
    assert all(e["ticket"] == tickets[e["reservation_id"]] for e in entries)
    winners = {e["reservation_id"] for e in entries if e["won"]}
    assert winners == set(rerun[:3])

    # Winners hold a code bound to them and order with it; the others are told and cannot.
    await make_opening_due(sim_orders, campaign_id)
    await run_jobs(sim_orders)
    for sub, headers in buyers:
        mine = await _mine(sim_orders, campaign_id, headers)
        placed = await order(sim_orders, headers, campaign_id)
        if mine["id"] in winners:
            assert mine["status"] == "won"
            assert (mine["code"]["customer_id"], mine["code"]["status"]) == (sub, "redeemed")
            assert mine["code"]["source"] == "lottery"
            assert placed.status_code == 201, placed.text
        else:
            assert (mine["status"], mine["code"]) == ("not_drawn", None)
            assert placed.json()["code"] == "purchase_code_required"
    again_drawn = await sim_orders.client.post(
        f"/v1/presales/{campaign_id}/draw", headers=shop.staff
    )
    assert again_drawn.json()["code"] == "reservation_draw_done"
    assert (await _public(sim_orders, f"/v1/presales/{campaign_id}/draw"))["seed"] == seed


async def test_the_opening_draws_by_itself_and_closes_reservations(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    shop = merchant(sim_orders, auth)
    campaign_id = await _reserving_campaign(shop, places=5)
    buyers = [customer(auth) for _ in range(3)]
    for _, headers in buyers:
        assert (await _reserve(sim_orders, campaign_id, headers)).status_code == 201
    eligibility = await shop.get(f"/v1/presales/{campaign_id}/eligibility")
    assert eligibility["reservations"]["reserved"] == 3
    await make_opening_due(sim_orders, campaign_id)
    await run_jobs(sim_orders)
    campaign = await shop.get(f"/v1/presales/{campaign_id}")
    assert campaign["status"] == "open"
    record = await _public(sim_orders, f"/v1/presales/{campaign_id}/draw")
    assert (record["status"], record["entries"], record["winners"]) == ("drawn", 3, 3)
    for _, headers in buyers:
        assert (await _mine(sim_orders, campaign_id, headers))["status"] == "won"
    late = await _reserve(sim_orders, campaign_id, auth("customer"))
    assert (late.status_code, late.json()["code"]) == (409, "reservation_closed")
    # A second run of the opening job draws nothing twice.
    await make_opening_due(sim_orders, campaign_id)
    await run_jobs(sim_orders)
    assert (await _public(sim_orders, f"/v1/presales/{campaign_id}/draw"))["drawn_at"] == record[
        "drawn_at"
    ]


async def test_reservations_are_refused_where_none_are_offered(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    shop = merchant(sim_orders, auth)
    plain = await shop.upcoming()
    buyer = auth("customer")
    for response in (
        await _reserve(sim_orders, plain, buyer),
        await sim_orders.client.get(f"/v1/presales/{plain}/draw"),
        await sim_orders.client.post(f"/v1/presales/{plain}/draw", headers=shop.staff),
    ):
        assert (response.status_code, response.json()["code"]) == (404, "reservations_not_offered")
    missing = await sim_orders.client.get(f"/v1/presales/{plain}/reservations/mine", headers=buyer)
    assert (missing.status_code, missing.json()["code"]) == (404, "reservation_not_found")
    draft = await shop.campaign(publish=False)
    hidden = await _reserve(sim_orders, draft, buyer)
    assert (hidden.status_code, hidden.json()["code"]) == (404, "presale_not_found")


async def test_a_draw_while_customers_reserve_loses_no_entry(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    shop = merchant(sim_orders, auth)
    campaign_id = await _reserving_campaign(shop, places=10)
    buyers = [customer(auth)[1] for _ in range(30)]
    draw = sim_orders.client.post(f"/v1/presales/{campaign_id}/draw", headers=shop.staff)
    results = await asyncio.gather(
        *(_reserve(sim_orders, campaign_id, h) for h in buyers[:15]),
        draw,
        *(_reserve(sim_orders, campaign_id, h) for h in buyers[15:]),
    )
    drawn = results[15]
    assert drawn.status_code == 200, drawn.text
    reservations = results[:15] + results[16:]
    accepted = {r.json()["id"] for r in reservations if r.status_code == 201}
    refused = [r.json()["code"] for r in reservations if r.status_code != 201]
    assert set(refused) <= {"reservation_closed"}
    entries = await _entries(sim_orders, campaign_id)
    assert {e["reservation_id"] for e in entries} == accepted
    record = await _public(sim_orders, f"/v1/presales/{campaign_id}/draw")
    assert record["entries"] == len(accepted)
    assert sum(e["won"] for e in entries) == min(10, len(accepted))


async def test_reservation_terms_are_kept_once_customers_reserved(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    shop = merchant(sim_orders, auth)
    campaign_id = await _reserving_campaign(shop, places=3)
    assert (await _reserve(sim_orders, campaign_id, auth("customer"))).status_code == 201
    for body in (
        {"mode": "code", "reservations": {"places": 2, "code_valid_hours": 48}},
        {"mode": "code", "reservations": {"places": 3, "code_valid_hours": 24}},
        {"mode": "code"},
        {"mode": "open"},
    ):
        refused = await shop.put_eligibility(campaign_id, **body)
        assert (refused.status_code, refused.json()["code"]) == (422, "eligibility_terms_locked")
        assert refused.json()["field"] == "reservations"
    grown = await shop.set_eligibility(
        campaign_id, mode="code", reservations={"places": 4, "code_valid_hours": 72}
    )
    assert grown["reservations"]["places"] == 4
    await sim_orders.client.post(f"/v1/presales/{campaign_id}/draw", headers=shop.staff)
    after = await shop.put_eligibility(
        campaign_id, mode="code", reservations={"places": 9, "code_valid_hours": 72}
    )
    assert (after.status_code, after.json()["code"]) == (422, "eligibility_terms_locked")
    # After the draw the campaign may still open up to everybody; the draw's record stays.
    opened = await shop.set_eligibility(campaign_id, mode="open")
    assert (opened["mode"], opened["reservations"]["places"]) == ("open", 4)
    assert (await _public(sim_orders, f"/v1/presales/{campaign_id}/draw"))["status"] == "drawn"
