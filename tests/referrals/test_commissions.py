"""Commissions from order events on the double-entry ledger, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from services.referrals.commissions import repository as ledger
from services.referrals.models import ledger_entry
from shared.events.contracts import (
    OrderCancelled,
    OrderCompleted,
    OrderPaid,
    OrderRefunded,
    PledgeCharged,
    PledgeDropped,
    PledgeRefunded,
)
from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.referrals.commission_support import Order, Pledge, Program, deliver


async def _chain(program: Program) -> tuple[dict[str, Any], dict[str, Any]]:
    """Level 2 recruited level 1 through their code."""
    upline = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    seller = await program.join(f"u_{uuid.uuid4().hex[:8]}", via=upline["code"])
    assert seller["upline_id"] == upline["id"]
    return seller, upline


async def _paid(client: httpx.AsyncClient, order: Order, amount: int) -> None:
    order.paid += amount
    response = await deliver(
        client, order.event(OrderPaid, stage="full", amount=amount, fully_paid=True)
    )
    assert response.status_code == 200, response.text


async def _refunded(client: httpx.AsyncClient, order: Order, amount: int) -> None:
    order.refunded += amount
    response = await deliver(client, order.event(OrderRefunded, amount=amount))
    assert response.status_code == 200, response.text


async def test_a_paid_order_accrues_both_levels_and_completion_makes_them_available(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    order = Order(program.merchant_id, "buyer-1", seller["code"])
    await _paid(referrals_client, order, 30000)
    assert await program.balances(seller["id"]) == {
        "pending": 3000,
        "available": 0,
        "withdrawing": 0,
        "withdrawn": 0,
        "owed": 0,
    }
    assert (await program.balances(upline["id"]))["pending"] == 1500
    done = await deliver(referrals_client, order.event(OrderCompleted))
    assert done.status_code == 200
    assert (await program.balances(seller["id"]))["available"] == 3000
    assert (await program.balances(upline["id"]))["available"] == 1500
    listed = await referrals_client.get(
        "/v1/commissions", headers=auth("customer", sub=seller["user_id"])
    )
    assert [(c["level"], c["amount"], c["state"]) for c in listed.json()["items"]] == [
        (1, 3000, "available")
    ]


async def test_refunds_of_100_then_200_on_300_reverse_to_exactly_zero(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    # The worked example of docs/referrals.md: an order of ¥300 at 10 % and 5 %.
    program = Program(referrals_client, auth)
    await program.rules(level1_bps=1000, level2_bps=500)
    seller, upline = await _chain(program)
    order = Order(program.merchant_id, "buyer-2", seller["code"])
    await _paid(referrals_client, order, 30000)
    await _refunded(referrals_client, order, 10000)
    assert (await program.balances(seller["id"]))["pending"] == 2000
    assert (await program.balances(upline["id"]))["pending"] == 1000
    await _refunded(referrals_client, order, 20000)
    assert (await program.balances(seller["id"]))["pending"] == 0
    assert (await program.balances(upline["id"]))["pending"] == 0


async def test_partial_refunds_round_on_the_cumulative_amount(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(level1_bps=333, level2_bps=0)
    seller = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    order = Order(program.merchant_id, "buyer-3", seller["code"])
    await _paid(referrals_client, order, 1001)  # 33.33 -> 33
    assert (await program.balances(seller["id"]))["pending"] == 33
    for _ in range(3):
        await _refunded(referrals_client, order, 1)  # 1000 -> 33, 999 -> 33, 998 -> 33
    assert (await program.balances(seller["id"]))["pending"] == 998 * 333 // 10000
    await _refunded(referrals_client, order, 998)
    assert (await program.balances(seller["id"]))["pending"] == 0


async def test_events_twice_and_out_of_order_change_nothing_more(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    seller, _ = await _chain(program)
    order = Order(program.merchant_id, "buyer-4", seller["code"])
    order.paid = 20000
    paid = order.event(OrderPaid, stage="full", amount=20000, fully_paid=True)
    order.refunded = 5000
    refund = order.event(OrderRefunded, amount=5000)
    # The refund arrives first, then the payment, then both again.
    for envelope in (refund, paid, refund, paid):
        assert (await deliver(referrals_client, envelope)).status_code == 200
    assert (await program.balances(seller["id"]))["pending"] == 1500


async def test_self_referral_earns_nothing_and_a_suspended_distributor_nothing_new(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    seller, upline = await _chain(program)
    own = Order(program.merchant_id, seller["user_id"], seller["code"])
    await _paid(referrals_client, own, 10000)
    assert (await program.balances(seller["id"]))["pending"] == 0
    assert (await program.balances(upline["id"]))["pending"] == 0
    earned = Order(program.merchant_id, "buyer-5", seller["code"])
    await _paid(referrals_client, earned, 10000)
    suspended = await referrals_client.post(
        f"/v1/distributors/{seller['id']}/suspend", headers=program.staff
    )
    assert suspended.json()["status"] == "suspended"
    later = Order(program.merchant_id, "buyer-6", seller["code"])
    await _paid(referrals_client, later, 10000)
    assert (await program.balances(seller["id"]))["pending"] == 1000  # the first stays theirs


async def test_a_third_level_never_earns(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    top = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    middle = await program.join(f"u_{uuid.uuid4().hex[:8]}", via=top["code"])
    bottom = await program.join(f"u_{uuid.uuid4().hex[:8]}", via=middle["code"])
    order = Order(program.merchant_id, "buyer-7", bottom["code"])
    await _paid(referrals_client, order, 10000)
    assert (await program.balances(bottom["id"]))["pending"] == 1000
    assert (await program.balances(middle["id"]))["pending"] == 500
    assert (await program.balances(top["id"]))["pending"] == 0


async def test_rates_over_the_cap_are_refused_and_an_unpaid_cancel_creates_nothing(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    refused = await program.rules(level1_bps=2000, level2_bps=1500, max_total_bps=3000)
    assert (refused.status_code, refused.json()["code"]) == (422, "commission_rates_over_cap")
    over = await program.rules(max_total_bps=10001)
    assert over.status_code == 422
    await program.rules()
    seller = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    order = Order(program.merchant_id, "buyer-8", seller["code"])
    cancelled = await deliver(
        referrals_client, order.event(OrderCancelled, reason="expired", forfeited_amount=0)
    )
    assert cancelled.status_code == 200
    listed = await referrals_client.get("/v1/commissions", headers=program.staff)
    assert listed.json()["items"] == []


async def test_concurrent_deliveries_of_one_orders_events_settle_once(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    seller, upline = await _chain(program)
    order = Order(program.merchant_id, "buyer-10", seller["code"])
    order.paid = 50000
    envelopes = [
        order.event(OrderPaid, stage="full", amount=50000, fully_paid=True) for _ in range(10)
    ]
    answers = await asyncio.gather(*(deliver(referrals_client, e) for e in envelopes))
    assert {a.status_code for a in answers} == {200}
    assert (await program.balances(seller["id"]))["pending"] == 5000
    assert (await program.balances(upline["id"]))["pending"] == 2500
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    async with app.state.sessionmaker() as session:
        assert await ledger.unreconciled(session) == []


_STEP = st.one_of(
    st.tuples(st.just("pay"), st.integers(1, 50_000)),
    st.tuples(st.just("refund"), st.integers(1, 50_000)),
    st.tuples(st.just("complete"), st.just(0)),
    st.tuples(st.just("replay"), st.integers(0, 100)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(_STEP, min_size=1, max_size=12))
async def test_any_sequence_of_events_keeps_the_ledger_exact(
    referrals_client: httpx.AsyncClient, auth: TokenFactory, steps: list[tuple[str, int]]
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(level1_bps=1234, level2_bps=567)
    seller, upline = await _chain(program)
    order = Order(program.merchant_id, f"buyer-{uuid.uuid4().hex[:6]}", seller["code"])
    sent: list[Any] = []
    for kind, amount in steps:
        if kind == "pay":
            order.paid += amount
            envelope = order.event(OrderPaid, stage="full", amount=amount, fully_paid=True)
        elif kind == "refund":
            back = min(amount, order.paid - order.refunded)
            if back == 0:
                continue
            order.refunded += back
            envelope = order.event(OrderRefunded, amount=back)
        elif kind == "complete":
            envelope = order.event(OrderCompleted)
        else:
            if not sent:
                continue
            envelope = sent[amount % len(sent)]  # an old event, again: duplicate or late
        sent.append(envelope)
        assert (await deliver(referrals_client, envelope)).status_code == 200
        net = order.paid - order.refunded
        for who, rate in ((seller, 1234), (upline, 567)):
            held = await program.balances(who["id"])
            assert held["pending"] + held["available"] == net * rate // 10000
            assert held["pending"] >= 0
            assert held["available"] >= 0
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    async with app.state.sessionmaker() as session:
        assert await ledger.unreconciled(session) == []
        # No money from nothing: the merchant's expense is exactly what the distributors hold.
        e = ledger_entry
        expense = f"merchant:{program.merchant_id}:commission_expense"
        paid_out = await session.scalar(
            select(func.coalesce(func.sum(e.c.amount), 0)).where(e.c.debit_account == expense)
        )
        taken_back = await session.scalar(
            select(func.coalesce(func.sum(e.c.amount), 0)).where(e.c.credit_account == expense)
        )
    total = sum(
        b["pending"] + b["available"]
        for b in [await program.balances(seller["id"]), await program.balances(upline["id"])]
    )
    assert int(paid_out or 0) - int(taken_back or 0) == total


async def _leader_commissions(
    client: httpx.AsyncClient, auth: TokenFactory, leader: str
) -> list[tuple[str, int, int]]:
    listed = await client.get("/v1/commissions", headers=auth("customer", sub=leader))
    assert listed.status_code == 200, listed.text
    return [(c["payee"], c["level"], c["amount"]) for c in listed.json()["items"]]


async def test_a_pickup_leader_earns_next_to_the_chain_and_refunds_reverse_it_too(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules(leader_bps=300)).status_code == 200
    seller, upline = await _chain(program)
    leader = f"leader_{uuid.uuid4().hex[:8]}"  # approved by orders, not a distributor yet
    order = Order(program.merchant_id, "buyer-1", seller["code"], pickup_leader_id=leader)
    await _paid(referrals_client, order, 30000)
    assert (await program.balances(seller["id"]))["pending"] == 3000
    assert (await program.balances(upline["id"]))["pending"] == 1500
    assert await _leader_commissions(referrals_client, auth, leader) == [("leader", 1, 900)]
    await _refunded(referrals_client, order, 10000)
    assert await _leader_commissions(referrals_client, auth, leader) == [("leader", 1, 600)]
    assert (await program.balances(seller["id"]))["pending"] == 2000
    # Without a distributor's code the leader still earns; on their own order they do not.
    plain = Order(program.merchant_id, "buyer-2", None, pickup_leader_id=leader)
    await _paid(referrals_client, plain, 10000)
    own = Order(program.merchant_id, leader, None, pickup_leader_id=leader)
    await _paid(referrals_client, own, 10000)
    assert sorted(await _leader_commissions(referrals_client, auth, leader)) == [
        ("leader", 1, 300),
        ("leader", 1, 600),
    ]
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    async with app.state.sessionmaker() as session:
        assert await ledger.unreconciled(session) == []


async def test_a_leader_who_is_a_suspended_distributor_earns_nothing_new(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules(leader_bps=300)).status_code == 200
    leader = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    suspended = await referrals_client.post(
        f"/v1/distributors/{leader['id']}/suspend", headers=program.staff
    )
    assert suspended.status_code == 200, suspended.text
    order = Order(program.merchant_id, "buyer-1", None, pickup_leader_id=leader["user_id"])
    await _paid(referrals_client, order, 30000)
    assert await _leader_commissions(referrals_client, auth, leader["user_id"]) == []


async def _run_due_jobs(client: httpx.AsyncClient) -> int:
    app = client._transport.app  # type: ignore[attr-defined]
    runner = JobRunner(
        sessionmaker=app.state.sessionmaker,
        tables=app.state.tables,
        handlers=app.state.job_handlers,
    )
    return await runner.run_due()


async def test_the_holding_period_releases_commissions_before_completion(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules(holding_days=0)).status_code == 200
    seller, upline = await _chain(program)
    order = Order(program.merchant_id, "buyer-1", seller["code"])
    await _paid(referrals_client, order, 20000)
    await _refunded(referrals_client, order, 5000)
    assert (await program.balances(seller["id"]))["pending"] == 1500
    assert await _run_due_jobs(referrals_client) == 1
    assert (await program.balances(seller["id"]))["available"] == 1500
    assert (await program.balances(upline["id"]))["available"] == 750
    # Completion afterwards changes nothing; a later refund reverses from available.
    assert (await deliver(referrals_client, order.event(OrderCompleted))).status_code == 200
    await _refunded(referrals_client, order, 5000)
    assert await program.balances(seller["id"]) == {
        "pending": 0,
        "available": 1000,
        "withdrawing": 0,
        "withdrawn": 0,
        "owed": 0,
    }


async def test_without_a_holding_period_an_order_waits_for_its_completion(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    rules = await program.rules()
    assert rules.json()["holding_days"] is None
    seller, _ = await _chain(program)
    order = Order(program.merchant_id, "buyer-1", seller["code"])
    await _paid(referrals_client, order, 20000)
    assert await _run_due_jobs(referrals_client) == 0
    assert (await program.balances(seller["id"]))["available"] == 0
    refused = await program.rules(holding_days=366)
    assert refused.status_code == 422
    assert refused.json()["code"] == "validation_error"


async def test_a_charged_pledge_earns_at_its_projects_rates_and_its_holding_period_releases_it(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    pledge = Pledge(program.merchant_id, "backer-1", seller["code"])
    own_rates = await referrals_client.put(
        f"/v1/commission-rules/overrides/project/{pledge.project_id}",
        json={"level1_bps": 2000, "level2_bps": 300},
        headers=program.staff,
    )
    assert own_rates.status_code == 200, own_rates.text
    pledge.paid = 19900
    charged = await deliver(
        referrals_client, pledge.event(PledgeCharged, amount=19900, method="card")
    )
    assert charged.status_code == 200, charged.text
    assert (await program.balances(seller["id"]))["pending"] == 3980
    assert (await program.balances(upline["id"]))["pending"] == 597
    # Without a holding period set, a pledge waits 7 days (a pledge never completes).
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    jobs = app.state.tables.scheduled_job
    key = f"pledge:{pledge.id}"
    async with app.state.sessionmaker() as session, session.begin():
        run_at = await session.scalar(select(jobs.c.run_at).where(jobs.c.key == key))
        assert run_at is not None
        assert timedelta(days=6, hours=23) < run_at - datetime.now(UTC) <= timedelta(days=7)
        await session.execute(update(jobs).where(jobs.c.key == key).values(run_at=func.now()))
    assert await _run_due_jobs(referrals_client) == 1
    assert (await program.balances(seller["id"]))["available"] == 3980
    # A refund afterwards takes back from available, to the fen.
    pledge.refunded = 19900
    refunded = await deliver(referrals_client, pledge.event(PledgeRefunded, amount=19900))
    assert refunded.status_code == 200, refunded.text
    assert (await program.balances(seller["id"]))["available"] == 0
    assert (await program.balances(upline["id"]))["available"] == 0


async def test_a_dropped_pledge_that_was_never_charged_earns_nothing(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, _ = await _chain(program)
    pledge = Pledge(program.merchant_id, "backer-2", seller["code"])
    dropped = await deliver(
        referrals_client,
        pledge.event(PledgeDropped, amount=19900, failure_code="card_declined"),
    )
    assert dropped.status_code == 200, dropped.text
    listed = await referrals_client.get(
        "/v1/commissions", headers=auth("customer", sub=seller["user_id"])
    )
    assert listed.json()["items"] == []
