"""Pledges on real PostgreSQL with the simulated provider: saved cards and wallet payments,
places never oversold under concurrency, changes, cancellations, holds, refunds, bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.crowdfund.models import HOLDING, pledge, pledge_item, project, reward
from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    get_json,
    live_project,
    outbox_payloads,
    place_pledge,
    run_jobs,
)
from tests.shared.payments.support import PaymentsApp

NOW = datetime.now(UTC)


async def _public(app: PaymentsApp, project_id: str) -> dict[str, Any]:
    page: dict[str, Any] = await get_json(app, f"/v1/projects/{project_id}/public")
    return page


async def _held(app: PaymentsApp, reward_id: str) -> tuple[int, int]:
    """(the reward's counter, the places its live pledges hold): always equal."""
    async with app.app.state.sessionmaker() as session:
        counter = await session.scalar(
            select(reward.c.reserved).where(reward.c.id == uuid.UUID(reward_id))
        )
        held = await session.scalar(
            select(func.coalesce(func.sum(pledge_item.c.quantity), 0))
            .join(pledge, pledge.c.id == pledge_item.c.pledge_id)
            .where(pledge_item.c.reward_id == uuid.UUID(reward_id), pledge.c.status.in_(HOLDING))
        )
    return int(counter or 0), int(held or 0)


async def _pledged_total(app: PaymentsApp, project_id: str) -> tuple[int, int]:
    """(the project's counter, the sum of its counted pledges): always equal."""
    async with app.app.state.sessionmaker() as session:
        counter = await session.scalar(
            select(project.c.pledged_amount).where(project.c.id == uuid.UUID(project_id))
        )
        total = await session.scalar(
            select(func.coalesce(func.sum(pledge.c.amount), 0)).where(
                pledge.c.project_id == uuid.UUID(project_id),
                pledge.c.status.in_(("confirmed", "collected")),
            )
        )
    return int(counter or 0), int(total or 0)


async def _simulate(app: PaymentsApp, backer: dict[str, str], payment_id: str) -> None:
    done = await app.client.post(
        f"/v1/pledges/payments/{payment_id}/simulate-action", json={"succeed": True}, headers=backer
    )
    assert done.status_code == 200, done.text


async def test_a_card_pledge_saves_the_card_charges_nothing_and_counts(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(
        sim_crowdfund, auth, rewards=[{"quantity_limit": 50}]
    )
    backer = auth("customer")
    placed = await place_pledge(
        sim_crowdfund, backer, project_id, tier, amount=12000, referral_code="DAD1"
    )
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert (body["status"], body["method"], body["amount"]) == ("confirmed", "card", 12000)
    assert body["setup"]["status"] == "succeeded"
    assert (body["payment"], body["paid_total"]) == (None, 0)
    assert await sim_crowdfund.provider_intents(qunbuy_service="crowdfund") == [] or all(
        intent["metadata"].get("reference", "").find(body["id"]) < 0
        for intent in await sim_crowdfund.provider_intents()
    )
    page = await _public(sim_crowdfund, project_id)
    assert (page["raised"], page["backers"], page["percent_bps"]) == (12000, 1, 120)
    assert page["rewards"][0]["places_left"] == 49
    assert await outbox_payloads(sim_crowdfund, "pledge.charged", pledge_id=body["id"]) == []


async def test_a_wallet_pledge_is_paid_at_once_and_counts_once_paid(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth)
    backer = auth("customer")
    placed = await place_pledge(
        sim_crowdfund,
        backer,
        project_id,
        tier,
        method="wechat_pay",
        payment_method="pm_wechat_pay",
        referral_code="GROUP7",
    )
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body["status"] == "pending"
    assert body["payment"]["next_action"]["type"] == "wechat_pay_display_qr_code"
    assert body["setup"] is None
    assert (await _public(sim_crowdfund, project_id))["raised"] == 0
    await _simulate(sim_crowdfund, backer, body["payment"]["id"])
    paid = await get_json(sim_crowdfund, f"/v1/pledges/{body['id']}", backer)
    assert (paid["status"], paid["paid_total"]) == ("collected", 9900)
    assert (await _public(sim_crowdfund, project_id))["raised"] == 9900
    (charged,) = await outbox_payloads(sim_crowdfund, "pledge.charged", pledge_id=body["id"])
    assert charged["referral_code"] == "GROUP7"
    assert (charged["amount"], charged["paid_total"], charged["refunded_total"]) == (9900, 9900, 0)
    assert (charged["customer_id"], charged["project_id"]) == (paid["customer_id"], project_id)


async def test_a_flexible_project_charges_a_card_at_pledge_time(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, funding_model="flexible")
    placed = await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert (body["status"], body["paid_total"], body["setup"]) == ("collected", 9900, None)
    assert body["payment"]["status"] == "succeeded"


async def test_two_hundred_concurrent_pledges_for_a_tier_of_fifty_hold_exactly_fifty(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(
        sim_crowdfund, auth, rewards=[{"quantity_limit": 50, "per_backer_limit": 2}]
    )
    backers = [auth("customer") for _ in range(100)]

    async def attempt(i: int) -> tuple[int, str]:
        response = await place_pledge(sim_crowdfund, backers[i % 100], project_id, tier)
        code = response.json().get("code", "") if response.status_code != 201 else ""
        return response.status_code, code

    results = await asyncio.gather(*(attempt(i) for i in range(200)))
    assert [status for status, _ in results].count(201) == 50
    assert {code for status, code in results if status != 201} == {"reward_sold_out"}
    assert await _held(sim_crowdfund, tier) == (50, 50)
    page = await _public(sim_crowdfund, project_id)
    assert (page["rewards"][0]["places_left"], page["raised"]) == (0, 50 * 9900)
    assert await _pledged_total(sim_crowdfund, project_id) == (50 * 9900, 50 * 9900)


async def test_changes_and_cancellations_racing_with_new_pledges_never_oversell(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier, bigger) = await live_project(
        sim_crowdfund,
        auth,
        rewards=[{"quantity_limit": 10}, {"quantity_limit": 5, "amount": 19900}],
    )
    first = [auth("customer") for _ in range(10)]
    ids = []
    for backer in first:
        placed = await place_pledge(sim_crowdfund, backer, project_id, tier)
        assert placed.status_code == 201, placed.text
        ids.append(placed.json()["id"])

    async def cancel(i: int) -> int:
        response = await sim_crowdfund.client.post(f"/v1/pledges/{ids[i]}/cancel", headers=first[i])
        return int(response.status_code)

    async def upgrade(i: int) -> int:
        response = await sim_crowdfund.client.put(
            f"/v1/pledges/{ids[i]}",
            json={"reward_id": bigger, "amount": 19900, "region": "CN"},
            headers=first[i],
        )
        return int(response.status_code)

    async def newcomer() -> int:
        response = await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
        return int(response.status_code)

    results = await asyncio.gather(
        *(cancel(i) for i in range(4)),
        *(upgrade(i) for i in range(4, 10)),
        *(newcomer() for _ in range(20)),
    )
    assert results[:4] == [200] * 4
    upgrades = results[4:10]
    assert upgrades.count(200) == 5  # the bigger tier has five places
    assert set(upgrades) == {200, 409}
    newcomers = results[10:]
    assert newcomers.count(201) == 4 + 5  # exactly the places given back
    assert await _held(sim_crowdfund, tier) == (10, 10)
    assert await _held(sim_crowdfund, bigger) == (5, 5)
    counter, total = await _pledged_total(sim_crowdfund, project_id)
    assert counter == total == 10 * 9900 + 5 * 19900


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": 9899}, 422, "pledge_amount_below_reward"),
        ({"amount": 9900, "region": "HK"}, 422, "pledge_amount_below_reward"),
        ({"region": None}, 422, "pledge_region_invalid"),
        ({"region": "US", "amount": 14900}, 201, ""),
        ({"reward_id": None}, 422, "pledge_reward_invalid"),
        ({"reward_id": str(uuid.uuid4())}, 404, "reward_not_found"),
        ({"amount": 0}, 422, "validation_error"),
        ({"amount": "9900"}, 422, "validation_error"),
        ({"referral_code": "bad\x00code"}, 422, "validation_error"),
        ({"quantity": 0}, 422, "validation_error"),
    ],
    ids=[
        "below-minimum",
        "below-minimum-with-shipping",
        "no-region",
        "other-region-pays-the-default-fee",
        "no-support-without-reward",
        "unknown-reward",
        "zero",
        "string-amount",
        "nul",
        "zero-quantity",
    ],
)
async def test_bad_pledges_are_refused_with_a_clear_code_and_hold_nothing(
    sim_crowdfund: PaymentsApp,
    auth: TokenFactory,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth)
    values = {"reward_id": tier, **body}
    response = await place_pledge(sim_crowdfund, auth("customer"), project_id, **values)
    assert response.status_code == status, response.text
    if status != 201:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
        assert await _held(sim_crowdfund, tier) == (0, 0)
        assert (await _public(sim_crowdfund, project_id))["raised"] == 0


async def test_sold_out_ended_and_suspended_are_refused_and_change_nothing(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (one, ended, later) = await live_project(
        sim_crowdfund,
        auth,
        rewards=[
            {"quantity_limit": 1},
            {"ends_at": (NOW - timedelta(seconds=1)).isoformat()},
            {"starts_at": (NOW + timedelta(days=1)).isoformat()},
        ],
    )
    assert (await place_pledge(sim_crowdfund, auth("customer"), project_id, one)).status_code == 201
    sold_out = await place_pledge(sim_crowdfund, auth("customer"), project_id, one)
    assert (sold_out.status_code, sold_out.json()["code"]) == (409, "reward_sold_out")
    assert sold_out.json()["available"] == 0
    for reward_id in (ended, later):
        closed = await place_pledge(sim_crowdfund, auth("customer"), project_id, reward_id)
        assert (closed.status_code, closed.json()["code"]) == (409, "reward_not_available")
    admin = auth("admin")
    await sim_crowdfund.client.post(f"/v1/projects/{project_id}/suspend", headers=admin)
    suspended = await place_pledge(sim_crowdfund, auth("customer"), project_id, later)
    assert (suspended.status_code, suspended.json()["code"]) == (409, "project_suspended")
    missing = await place_pledge(sim_crowdfund, auth("customer"), str(uuid.uuid4()), one)
    assert (missing.status_code, missing.json()["code"]) == (404, "project_not_found")
    no_key = await place_pledge(sim_crowdfund, auth("customer"), project_id, one, key=None)
    assert (no_key.status_code, no_key.json()["code"]) == (400, "idempotency_key_required")
    assert await _held(sim_crowdfund, one) == (1, 1)
    assert (await _public(sim_crowdfund, project_id))["backers"] == 1


async def test_a_replayed_pledge_is_one_pledge(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth)
    backer = auth("customer")
    first = await place_pledge(sim_crowdfund, backer, project_id, tier, key="same-key")
    again = await place_pledge(sim_crowdfund, backer, project_id, tier, key="same-key")
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert await _held(sim_crowdfund, tier) == (1, 1)


async def test_shipping_add_ons_and_the_per_backer_limit(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier, addon) = await live_project(
        sim_crowdfund,
        auth,
        rewards=[
            {"per_backer_limit": 3},
            {"kind": "addon", "title": "Spare filter", "amount": 1500, "quantity_limit": 2,
             "shipping_fees": None},
        ],
    )  # fmt: skip
    backer = auth("customer")
    # Two purifiers to Hong Kong (¥20 each) and two filters: 2*99 + 2*20 + 2*15 = ¥268.
    addons = [{"reward_id": addon, "quantity": 2}]
    body: dict[str, Any] = {"quantity": 2, "addons": addons, "region": "HK"}
    short = await place_pledge(sim_crowdfund, backer, project_id, tier, amount=26799, **body)
    assert (short.status_code, short.json()["minimum"]) == (422, 26800)
    exact = await place_pledge(sim_crowdfund, backer, project_id, tier, amount=26800, **body)
    assert exact.status_code == 201, exact.text
    assert (exact.json()["shipping_fee"], len(exact.json()["items"])) == (4000, 2)
    over = await place_pledge(sim_crowdfund, backer, project_id, tier, quantity=2, amount=99999)
    assert (over.status_code, over.json()["code"]) == (409, "reward_backer_limit")
    addon_as_tier = await place_pledge(sim_crowdfund, backer, project_id, addon, amount=99999)
    assert (addon_as_tier.status_code, addon_as_tier.json()["code"]) == (
        422,
        "pledge_reward_invalid",
    )
    assert await _held(sim_crowdfund, addon) == (2, 2)


async def test_support_without_reward_from_its_minimum(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, _ = await live_project(sim_crowdfund, auth, support_minimum=100)
    backer = auth("customer")
    low = await place_pledge(sim_crowdfund, backer, project_id, None, amount=99, region=None)
    assert (low.status_code, low.json()["code"]) == (422, "pledge_amount_below_reward")
    fine = await place_pledge(sim_crowdfund, backer, project_id, None, amount=100, region=None)
    assert fine.status_code == 201, fine.text
    assert (fine.json()["status"], fine.json()["items"]) == ("confirmed", [])


async def test_cancelling_a_wallet_pledge_refunds_it_and_gives_the_place_back(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth)
    backer = auth("customer")
    placed = (
        await place_pledge(
            sim_crowdfund, backer, project_id, tier, method="alipay", payment_method="pm_alipay"
        )
    ).json()
    await _simulate(sim_crowdfund, backer, placed["payment"]["id"])
    other = auth("customer")
    refused = await sim_crowdfund.client.post(f"/v1/pledges/{placed['id']}/cancel", headers=other)
    assert (refused.status_code, refused.json()["code"]) == (404, "pledge_not_found")
    cancelled = await sim_crowdfund.client.post(
        f"/v1/pledges/{placed['id']}/cancel", headers=backer
    )
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["refund_pending"]) == ("cancelled", 9900)
    await run_jobs(sim_crowdfund)
    after = await get_json(sim_crowdfund, f"/v1/pledges/{placed['id']}", backer)
    assert (after["refunded_total"], after["refund_pending"]) == (9900, 0)
    (refunded,) = await outbox_payloads(sim_crowdfund, "pledge.refunded", pledge_id=placed["id"])
    assert (refunded["amount"], refunded["refunded_total"], refunded["paid_total"]) == (
        9900,
        9900,
        9900,
    )
    assert await _held(sim_crowdfund, tier) == (0, 0)
    assert (await _public(sim_crowdfund, project_id))["raised"] == 0
    again = await sim_crowdfund.client.post(f"/v1/pledges/{placed['id']}/cancel", headers=backer)
    assert (again.status_code, again.json()["code"]) == (409, "pledge_state_conflict")


async def test_a_paid_pledge_may_go_down_with_a_refund_but_not_up(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth)
    backer = auth("customer")
    placed = (
        await place_pledge(
            sim_crowdfund,
            backer,
            project_id,
            tier,
            amount=15000,
            method="wechat_pay",
            payment_method="pm_wechat_pay",
        )
    ).json()
    await _simulate(sim_crowdfund, backer, placed["payment"]["id"])
    path = f"/v1/pledges/{placed['id']}"
    up = await sim_crowdfund.client.put(
        path, json={"reward_id": tier, "amount": 20000, "region": "CN"}, headers=backer
    )
    assert (up.status_code, up.json()["code"]) == (409, "pledge_state_conflict")
    down = await sim_crowdfund.client.put(
        path, json={"reward_id": tier, "amount": 10000, "region": "CN"}, headers=backer
    )
    assert down.status_code == 200, down.text
    assert (down.json()["amount"], down.json()["refund_pending"]) == (10000, 5000)
    await run_jobs(sim_crowdfund)
    after = await get_json(sim_crowdfund, path, backer)
    assert (after["paid_total"], after["refunded_total"]) == (15000, 5000)
    assert (await _public(sim_crowdfund, project_id))["raised"] == 10000


async def test_no_cancelling_in_the_last_hour_when_the_project_says_so(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    window: dict[str, Any] = {
        "launch_at": (NOW - timedelta(hours=23, minutes=30)).isoformat(),
        "deadline_at": (NOW + timedelta(minutes=30)).isoformat(),
    }
    for strict, expected in ((True, 409), (False, 200)):
        project_id, _, (tier,) = await live_project(
            sim_crowdfund, auth, no_refund_last_hour=strict, **window
        )
        backer = auth("customer")
        placed = (await place_pledge(sim_crowdfund, backer, project_id, tier)).json()
        response = await sim_crowdfund.client.post(
            f"/v1/pledges/{placed['id']}/cancel", headers=backer
        )
        assert response.status_code == expected, response.text
        if strict:
            assert response.json()["code"] == "pledge_last_hour"
            assert (await _public(sim_crowdfund, project_id))["raised"] == 9900


async def test_an_unpaid_hold_expires_and_a_late_payment_is_refunded(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(
        sim_crowdfund, auth, rewards=[{"quantity_limit": 1}]
    )
    backer = auth("customer")
    placed = (
        await place_pledge(
            sim_crowdfund,
            backer,
            project_id,
            tier,
            method="wechat_pay",
            payment_method="pm_wechat_pay",
        )
    ).json()
    assert await _held(sim_crowdfund, tier) == (1, 1)
    async with sim_crowdfund.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(pledge)
            .where(pledge.c.id == uuid.UUID(placed["id"]))
            .values(hold_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await run_jobs(sim_crowdfund)
    expired = await get_json(sim_crowdfund, f"/v1/pledges/{placed['id']}", backer)
    assert (expired["status"], expired["cancel_reason"]) == ("expired", "hold_expired")
    assert await _held(sim_crowdfund, tier) == (0, 0)
    # The QR code is scanned after all: the money goes back.
    await _simulate(sim_crowdfund, backer, placed["payment"]["id"])
    await run_jobs(sim_crowdfund)
    late = await get_json(sim_crowdfund, f"/v1/pledges/{placed['id']}", backer)
    assert (late["status"], late["paid_total"], late["refunded_total"]) == ("expired", 9900, 9900)
    assert (await _public(sim_crowdfund, project_id))["raised"] == 0


async def test_a_reward_with_backers_may_only_get_better_for_them(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth)
    path = f"/v1/projects/{project_id}/rewards/{tier}"
    base = {
        "title": "Early bird purifier",
        "amount": 9900,
        "delivery_month": "2027-06",
        "shipping_fees": {"CN": 0, "HK": 2000, "*": 5000},
    }
    assert (await sim_crowdfund.client.put(path, json=base, headers=staff)).status_code == 200
    await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
    for field, value in (
        ("amount", 10900),
        ("delivery_month", "2027-09"),
        ("shipping_fees", {"CN": 0, "HK": 2500, "*": 5000}),
        ("shipping_fees", {"CN": 0, "*": 5000}),
    ):
        worse = await sim_crowdfund.client.put(path, json={**base, field: value}, headers=staff)
        assert worse.status_code == 422, worse.text
        assert (worse.json()["code"], worse.json()["field"]) == ("reward_terms_locked", field)
    better = await sim_crowdfund.client.put(
        path, json={**base, "amount": 8900, "delivery_month": "2027-05"}, headers=staff
    )
    assert better.status_code == 200, better.text
    gone = await sim_crowdfund.client.delete(path, headers=staff)
    assert (gone.status_code, gone.json()["code"]) == (409, "reward_has_backers")


async def test_stretch_goals_unlock_in_order_once_each(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth, goal=10000)
    for threshold, title in ((30000, "Night mode"), (20000, "Blue colour")):
        created = await sim_crowdfund.client.post(
            f"/v1/projects/{project_id}/stretch-goals",
            json={"threshold": threshold, "title": title},
            headers=staff,
        )
        assert created.status_code == 201, created.text
    backer = auth("customer")
    placed = (await place_pledge(sim_crowdfund, backer, project_id, tier, amount=35000)).json()
    unlocked = await outbox_payloads(
        sim_crowdfund, "project.stretch_goal_unlocked", project_id=project_id
    )
    assert [(e["title"], e["raised"]) for e in unlocked] == [
        ("Blue colour", 35000),
        ("Night mode", 35000),
    ]
    # Going back below a threshold does not lock a goal again, nor announce it twice.
    await sim_crowdfund.client.post(f"/v1/pledges/{placed['id']}/cancel", headers=backer)
    await place_pledge(sim_crowdfund, auth("customer"), project_id, tier, amount=35000)
    page = await _public(sim_crowdfund, project_id)
    assert [g["unlocked"] for g in page["stretch_goals"]] == [True, True]
    again = await outbox_payloads(
        sim_crowdfund, "project.stretch_goal_unlocked", project_id=project_id
    )
    assert len(again) == 2
