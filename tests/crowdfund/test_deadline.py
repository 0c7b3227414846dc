"""The deadline on real PostgreSQL with the simulated provider: the decision at the goal and
one fen short, throttled off-session charges, a run killed half-way and resumed by another
worker, the fix window (declines, authentication_required, a new card, 3D Secure), the kill
switch and an admin's cancellation."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.crowdfund.models import pledge
from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    get_json,
    live_project,
    make_due,
    outbox_payloads,
    place_pledge,
    run_jobs,
)
from tests.helpers import eventually
from tests.shared.payments.support import PaymentsApp, payments_app, payments_env


@pytest.fixture
async def second_worker(
    service_env: Callable[..., dict[str, str]], sim_crowdfund: PaymentsApp
) -> AsyncIterator[PaymentsApp]:
    """Another crowdfund process on the same database (its own pools and provider client)."""
    env = service_env("crowdfund", **payments_env("simulated"))
    async with payments_app("crowdfund", env) as app:
        yield app


async def _charges(app: PaymentsApp, pledge_id: str) -> list[tuple[str, int]]:
    """(status, captured) of each off-session attempt of a pledge, oldest first."""
    p = app.ctx.tables.payment
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(
            select(p.c.status, p.c.amount_captured)
            .where(p.c.reference == f"pledge:{pledge_id}:charge")
            .order_by(p.c.created_at)
        )
        return [(r.status, r.amount_captured) for r in rows]


async def _statuses(app: PaymentsApp, project_id: str) -> dict[str, int]:
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(
            select(pledge.c.status, func.count())
            .where(pledge.c.project_id == uuid.UUID(project_id))
            .group_by(pledge.c.status)
        )
        return {r[0]: r[1] for r in rows}


async def _wallet_pledge(
    app: PaymentsApp, backer: dict[str, str], project_id: str, tier: str
) -> dict[str, Any]:
    placed = await place_pledge(
        app, backer, project_id, tier, method="wechat_pay", payment_method="pm_wechat_pay"
    )
    body: dict[str, Any] = placed.json()
    paid = await app.client.post(
        f"/v1/pledges/payments/{body['payment']['id']}/simulate-action",
        json={"succeed": True},
        headers=backer,
    )
    assert paid.status_code == 200, paid.text
    return body


async def _decision_only(app: PaymentsApp) -> None:
    """The due jobs (the deadline's decision), without the charge workers' sweeps."""
    runner = JobRunner(
        sessionmaker=app.app.state.sessionmaker,
        tables=app.app.state.tables,
        handlers=app.app.state.job_handlers,
    )
    assert await runner.run_due() >= 1


async def _decide(app: PaymentsApp, project_id: str) -> None:
    await make_due(app, project_id, what="deadline")
    await run_jobs(app)


@pytest.mark.parametrize(("goal", "outcome"), [(19800, "succeeded"), (19801, "failed")])
async def test_the_deadline_exactly_at_the_goal_succeeds_and_one_fen_short_fails(
    sim_crowdfund: PaymentsApp, auth: TokenFactory, goal: int, outcome: str
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth, goal=goal)
    card_backer, wallet_backer = auth("customer"), auth("customer")
    card = (
        await place_pledge(sim_crowdfund, card_backer, project_id, tier, referral_code="LINK9")
    ).json()
    wallet = await _wallet_pledge(sim_crowdfund, wallet_backer, project_id, tier)
    pending = (  # never paid: it holds a place until the deadline, then lets it go
        await place_pledge(
            sim_crowdfund, auth("customer"), project_id, tier, method="alipay",
            payment_method="pm_alipay",
        )
    ).json()  # fmt: skip
    await _decide(sim_crowdfund, project_id)
    project = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert (project["status"], project["final_amount"], project["final_backers"]) == (
        outcome,
        19800,
        2,
    )
    page = await get_json(sim_crowdfund, f"/v1/projects/{project_id}/public")
    assert (page["raised"], page["backers"], page["seconds_left"]) == (19800, 2, 0)
    expired = await get_json(sim_crowdfund, f"/v1/pledges/{pending['id']}", staff)
    assert (expired["status"], expired["cancel_reason"]) == ("expired", "deadline")
    mine = await get_json(sim_crowdfund, f"/v1/pledges/{card['id']}", card_backer)
    theirs = await get_json(sim_crowdfund, f"/v1/pledges/{wallet['id']}", wallet_backer)
    events = await outbox_payloads(sim_crowdfund, f"project.{outcome}", project_id=project_id)
    assert [(e["raised"], e["goal"], e["backers"]) for e in events] == [(19800, goal, 2)]
    if outcome == "succeeded":
        assert (mine["status"], mine["paid_total"]) == ("collected", 9900)
        assert await _charges(sim_crowdfund, card["id"]) == [("succeeded", 9900)]
        (charged,) = await outbox_payloads(sim_crowdfund, "pledge.charged", pledge_id=card["id"])
        assert (charged["referral_code"], charged["method"], charged["amount"]) == (
            "LINK9",
            "card",
            9900,
        )
        assert (theirs["status"], theirs["refunded_total"]) == ("collected", 0)
    else:
        # Nobody with a saved card is charged; the wallet payment goes back by itself.
        assert (mine["status"], mine["cancel_reason"]) == ("cancelled", "project_failed")
        assert await _charges(sim_crowdfund, card["id"]) == []
        assert (theirs["status"], theirs["refunded_total"]) == ("cancelled", 9900)
        (refunded,) = await outbox_payloads(
            sim_crowdfund, "pledge.refunded", pledge_id=wallet["id"]
        )
        assert (refunded["amount"], refunded["refunded_total"]) == (9900, 9900)
    # The job run again decides nothing twice.
    await _decide(sim_crowdfund, project_id)
    assert (
        len(await outbox_payloads(sim_crowdfund, f"project.{outcome}", project_id=project_id)) == 1
    )


async def test_charges_keep_to_the_rate_across_two_workers(
    sim_crowdfund: PaymentsApp, second_worker: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, goal=9900)
    for _ in range(24):
        placed = await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
        assert placed.status_code == 201, placed.text
    await make_due(sim_crowdfund, project_id, what="deadline")
    await _decision_only(second_worker)
    started = time.monotonic()

    async def drain(app: PaymentsApp) -> int:
        total = 0
        while claimed := await app.app.state.charges.run_due():
            total += claimed
        return total

    counts = await asyncio.gather(drain(sim_crowdfund), drain(second_worker))
    elapsed = time.monotonic() - started
    assert sum(counts) == 24
    assert await _statuses(sim_crowdfund, project_id) == {"collected": 24}
    # 20 a second over both workers (CHARGE_RATE_PER_SECOND): the 24th slot is 1.15 s in.
    assert elapsed >= 1.1


async def test_a_deadline_run_killed_half_way_is_resumed_by_another_worker_without_double_charges(
    sim_crowdfund: PaymentsApp, second_worker: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, goal=9900)
    ids = []
    for _ in range(30):
        placed = await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
        ids.append(placed.json()["id"])
    await make_due(sim_crowdfund, project_id, what="deadline")
    await _decision_only(sim_crowdfund)
    assert await _statuses(sim_crowdfund, project_id) == {"charge_due": 30}
    # The first worker dies in the middle of its batch (some charged, some in flight).
    worker = asyncio.create_task(sim_crowdfund.app.state.charges.run_due())

    async def some_collected() -> bool:
        return (await _statuses(sim_crowdfund, project_id)).get("collected", 0) >= 5

    await eventually(some_collected, "the first worker charged some")
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    halfway = await _statuses(sim_crowdfund, project_id)
    assert halfway.get("collected", 0) < 30
    # Its lease runs out; another worker takes over.
    async with sim_crowdfund.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(pledge)
            .where(pledge.c.project_id == uuid.UUID(project_id), pledge.c.status == "charging")
            .values(charge_locked_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    await run_jobs(second_worker)
    assert await _statuses(sim_crowdfund, project_id) == {"collected": 30}
    for pledge_id in ids:
        assert await _charges(sim_crowdfund, pledge_id) == [("succeeded", 9900)]
        intents = await sim_crowdfund.provider_intents(reference=f"pledge:{pledge_id}:charge")
        assert len(intents) == 1, pledge_id
    charged = await outbox_payloads(sim_crowdfund, "pledge.charged", project_id=project_id)
    assert len(charged) == 30


@pytest.mark.parametrize(
    ("card", "code"),
    [
        ("pm_card_chargeCustomerFail", "generic_decline"),
        ("pm_card_alwaysAuthenticate", "authentication_required"),
    ],
)
async def test_a_failing_card_is_retried_on_days_0_3_and_6_then_dropped(
    sim_crowdfund: PaymentsApp, auth: TokenFactory, card: str, code: str
) -> None:
    project_id, staff, (tier,) = await live_project(
        sim_crowdfund, auth, goal=9900, rewards=[{"quantity_limit": 10}]
    )
    backer = auth("customer")
    placed = (
        await place_pledge(sim_crowdfund, backer, project_id, tier, payment_method=card)
    ).json()
    assert placed["status"] == "confirmed"  # the card saved fine
    await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
    await _decide(sim_crowdfund, project_id)
    path = f"/v1/pledges/{placed['id']}"
    failed = await get_json(sim_crowdfund, path, backer)
    assert (failed["status"], failed["failure_code"], failed["charge_attempt"]) == (
        "payment_failed",
        code,
        1,
    )
    fix_until = datetime.fromisoformat(failed["fix_until"])
    retry = datetime.fromisoformat(failed["next_retry_at"])
    assert timedelta(days=6, hours=23) < fix_until - datetime.now(UTC) <= timedelta(days=7)
    assert timedelta(days=2, hours=23) < retry - datetime.now(UTC) <= timedelta(days=3)
    (told,) = await outbox_payloads(sim_crowdfund, "pledge.payment_failed", pledge_id=placed["id"])
    assert (told["attempt"], told["failure_code"], told["amount"]) == (1, code, 9900)
    for attempt in (2, 3):
        await make_due(sim_crowdfund, project_id, what="retry")
        await run_jobs(sim_crowdfund)
        again = await get_json(sim_crowdfund, path, backer)
        assert (again["status"], again["charge_attempt"]) == ("payment_failed", attempt)
    assert again["next_retry_at"] is None  # day 6 was the last
    failing = await get_json(sim_crowdfund, "/v1/pledges?status=payment_failed", staff)
    assert [p["id"] for p in failing["items"]] == [placed["id"]]
    await make_due(sim_crowdfund, project_id, what="window")
    await run_jobs(sim_crowdfund)
    dropped = await get_json(sim_crowdfund, path, backer)
    assert (dropped["status"], dropped["paid_total"]) == ("dropped", 0)
    assert [s for s, _ in await _charges(sim_crowdfund, placed["id"])] == [
        "requires_payment_method"
    ] * 3
    (gone,) = await outbox_payloads(sim_crowdfund, "pledge.dropped", pledge_id=placed["id"])
    assert (gone["amount"], gone["failure_code"]) == (9900, code)
    page = await get_json(sim_crowdfund, f"/v1/projects/{project_id}/public")
    assert page["raised"] == 19800  # locked at the deadline
    assert page["rewards"][0]["places_left"] == 9


async def test_a_backer_fixes_a_declined_charge_with_another_card(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, goal=9900)
    backer = auth("customer")
    placed = (
        await place_pledge(
            sim_crowdfund, backer, project_id, tier, payment_method="pm_card_chargeCustomerFail"
        )
    ).json()
    await _decide(sim_crowdfund, project_id)
    path = f"/v1/pledges/{placed['id']}"
    assert (await get_json(sim_crowdfund, path, backer))["status"] == "payment_failed"
    saved = await sim_crowdfund.post(
        f"{path}/payment-method", {"payment_method": "pm_card_visa"}, backer
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["status"] == "succeeded"
    await run_jobs(sim_crowdfund)
    fixed = await get_json(sim_crowdfund, path, backer)
    assert (fixed["status"], fixed["paid_total"], fixed["charge_attempt"]) == ("collected", 9900, 2)
    assert await _charges(sim_crowdfund, placed["id"]) == [
        ("requires_payment_method", 0),
        ("succeeded", 9900),
    ]


async def test_authentication_required_then_the_backer_pays_with_3d_secure(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, goal=9900)
    backer = auth("customer")
    placed = (
        await place_pledge(
            sim_crowdfund, backer, project_id, tier, payment_method="pm_card_alwaysAuthenticate"
        )
    ).json()
    await _decide(sim_crowdfund, project_id)
    path = f"/v1/pledges/{placed['id']}"
    confirmed = await sim_crowdfund.post(
        f"{path}/confirm-payment", {"payment_method": "pm_card_alwaysAuthenticate"}, backer
    )
    assert confirmed.status_code == 200, confirmed.text
    body = confirmed.json()
    assert body["payment"]["status"] == "requires_action"
    assert body["payment"]["client_secret"]
    # While the backer authenticates, the automatic retry starts no second attempt.
    await make_due(sim_crowdfund, project_id, what="retry")
    await run_jobs(sim_crowdfund)
    assert len(await _charges(sim_crowdfund, placed["id"])) == 1
    other = auth("customer")
    refused = await sim_crowdfund.post(
        f"{path}/confirm-payment", {"payment_method": "pm_card_visa"}, other
    )
    assert (refused.status_code, refused.json()["code"]) == (404, "pledge_not_found")
    done = await sim_crowdfund.client.post(
        f"/v1/pledges/payments/{body['payment']['id']}/simulate-action",
        json={"succeed": True},
        headers=backer,
    )
    assert done.status_code == 200, done.text
    paid = await get_json(sim_crowdfund, path, backer)
    assert (paid["status"], paid["paid_total"]) == ("collected", 9900)
    assert await _charges(sim_crowdfund, placed["id"]) == [("succeeded", 9900)]


async def test_no_charges_while_suspended(sim_crowdfund: PaymentsApp, auth: TokenFactory) -> None:
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, goal=9900)
    placed = (await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)).json()
    admin = auth("admin")
    await make_due(sim_crowdfund, project_id, what="deadline")
    await sim_crowdfund.client.post(f"/v1/projects/{project_id}/suspend", headers=admin)
    await run_jobs(sim_crowdfund)
    assert await _statuses(sim_crowdfund, project_id) == {"charge_due": 1}
    assert await _charges(sim_crowdfund, placed["id"]) == []
    await sim_crowdfund.client.post(f"/v1/projects/{project_id}/resume", headers=admin)
    await run_jobs(sim_crowdfund)
    assert await _statuses(sim_crowdfund, project_id) == {"collected": 1}


async def test_an_admin_cancels_a_live_project_nobody_is_charged_and_wallets_are_refunded(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth)
    card = (await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)).json()
    wallet_backer = auth("customer")
    wallet = await _wallet_pledge(sim_crowdfund, wallet_backer, project_id, tier)
    refused = await sim_crowdfund.client.post(f"/v1/projects/{project_id}/cancel", headers=staff)
    assert (refused.status_code, refused.json()["code"]) == (403, "role_required")
    cancelled = await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/cancel", headers=auth("admin")
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    late = await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
    assert (late.status_code, late.json()["code"]) == (409, "project_not_live")
    await make_due(sim_crowdfund, project_id, what="deadline")
    await run_jobs(sim_crowdfund)
    assert await _statuses(sim_crowdfund, project_id) == {"cancelled": 2}
    assert await _charges(sim_crowdfund, card["id"]) == []
    theirs = await get_json(sim_crowdfund, f"/v1/pledges/{wallet['id']}", wallet_backer)
    assert (theirs["refunded_total"], theirs["cancel_reason"]) == (9900, "project_cancelled")
