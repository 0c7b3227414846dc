"""Batches of order events through the signed inbox (/internal/events/batch), on real
PostgreSQL: duplicates, order within a batch, concurrent overlapping batches, refusals, and
the set-based path writing what the event-by-event path writes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from services.referrals.commissions import repository as ledger
from services.referrals.commissions import service
from services.referrals.models import commission, distributor, ledger_entry
from shared.events import SIGNATURE_HEADER, Envelope, sign
from shared.events._inbox import MAX_BATCH_EVENTS
from shared.events.contracts import (
    OrderCancelled,
    OrderCompleted,
    OrderEvent,
    OrderPaid,
    OrderRefunded,
    contract_for,
)
from shared.scheduler import JobRunner
from tests.conftest import TEST_EVENT_SECRET, TokenFactory
from tests.referrals.commission_support import (
    Order,
    Program,
    deliver,
    deliver_batch,
    signed_batch,
)


def paid(order: Order, amount: int) -> Envelope:
    order.paid += amount
    return order.event(OrderPaid, stage="full", amount=amount, fully_paid=True)


def refunded(order: Order, amount: int) -> Envelope:
    order.refunded += amount
    return order.event(OrderRefunded, amount=amount)


async def _chain(program: Program, tag: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    upline = await program.join(f"{tag}upline-{uuid.uuid4().hex[:6]}")
    seller = await program.join(f"{tag}seller-{uuid.uuid4().hex[:6]}", via=upline["code"])
    return seller, upline


def _statuses(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["status"] for r in response.json()["results"]]


async def _reconciled(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    async with app.state.sessionmaker() as session:
        assert await ledger.unreconciled(session) == []


async def _counts(client: httpx.AsyncClient, merchant_id: str) -> tuple[int, int]:
    """(commissions, ledger entries) of the merchant."""
    app = client._transport.app  # type: ignore[attr-defined]
    async with app.state.sessionmaker() as session:
        commissions = await session.scalar(
            select(func.count()).where(commission.c.merchant_id == merchant_id)
        )
        entries = await session.scalar(
            select(func.count()).where(ledger_entry.c.merchant_id == merchant_id)
        )
    return int(commissions or 0), int(entries or 0)


async def test_duplicates_inside_a_batch_and_across_batches_apply_once(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    first = Order(program.merchant_id, "buyer-a", seller["code"])
    second = Order(program.merchant_id, "buyer-b", seller["code"])
    one, two = paid(first, 30000), paid(second, 10000)
    answer = await deliver_batch(referrals_client, [one, one, two, one])
    assert _statuses(answer) == ["applied", "duplicate", "applied", "duplicate"]
    assert [r["event_id"] for r in answer.json()["results"]] == [
        str(e.id) for e in (one, one, two, one)
    ]
    again = await deliver_batch(referrals_client, [two, one])
    assert _statuses(again) == ["duplicate", "duplicate"]
    # And the single endpoint knows them too.
    assert (await deliver(referrals_client, one)).json()["status"] == "duplicate"
    assert (await program.balances(seller["id"]))["pending"] == 4000
    assert (await program.balances(upline["id"]))["pending"] == 2000
    assert await _counts(referrals_client, program.merchant_id) == (4, 4)
    await _reconciled(referrals_client)


async def test_paid_and_refunded_of_one_order_in_one_batch_in_either_order(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    in_order = Order(program.merchant_id, "buyer-c", seller["code"])
    pay_first = [paid(in_order, 20000), refunded(in_order, 5000)]
    backwards = Order(program.merchant_id, "buyer-d", seller["code"])
    payment = paid(backwards, 30000)
    refund_first = [refunded(backwards, 30000), payment]
    answer = await deliver_batch(referrals_client, pay_first + refund_first)
    assert _statuses(answer) == ["applied"] * 4
    # 10 % of 15,000 held for the first order; the second was refunded in full: nothing.
    assert (await program.balances(seller["id"]))["pending"] == 1500
    assert (await program.balances(upline["id"]))["pending"] == 750
    # The completion and a late copy of the payment, in one batch, settle the rest.
    done = await deliver_batch(
        referrals_client, [in_order.event(OrderCompleted), backwards.event(OrderCompleted), payment]
    )
    assert _statuses(done) == ["applied", "applied", "duplicate"]
    assert (await program.balances(seller["id"]))["available"] == 1500
    assert (await program.balances(seller["id"]))["pending"] == 0
    await _reconciled(referrals_client)


async def test_concurrent_batches_with_overlapping_events_make_no_duplicate_commission(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    orders = [Order(program.merchant_id, f"buyer-{i}", seller["code"]) for i in range(12)]
    payments = [paid(o, 10000) for o in orders]
    refunds = [refunded(o, 2500) for o in orders[:6]]
    # Four batches, each sharing events with the others, some in another order.
    batches = [
        payments[:8] + refunds[:3],
        refunds[2:6] + payments[4:12],
        list(reversed(payments)),
        payments[::2] + refunds,
    ]
    answers = await asyncio.gather(*(deliver_batch(referrals_client, b) for b in batches))
    applied: dict[str, int] = {}
    for answer in answers:
        assert answer.status_code == 200, answer.text
        for result in answer.json()["results"]:
            assert result["status"] in ("applied", "duplicate")
            if result["status"] == "applied":
                applied[result["event_id"]] = applied.get(result["event_id"], 0) + 1
    assert applied == {str(e.id): 1 for e in payments + refunds}
    # 12 orders of 10,000, six of them refunded 2,500: 10 % and 5 % of 105,000.
    assert (await program.balances(seller["id"]))["pending"] == 10500
    assert (await program.balances(upline["id"]))["pending"] == 5250
    commissions, _ = await _counts(referrals_client, program.merchant_id)
    assert commissions == 24
    await _reconciled(referrals_client)


async def test_a_forged_or_unsigned_batch_is_refused_and_records_nothing(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, _ = await _chain(program)
    events = [paid(Order(program.merchant_id, "buyer-f", seller["code"]), 10000)]
    body, headers = signed_batch(events, secret="not-the-secret")
    for sent in (headers, {"content-type": "application/json"}):
        refused = await referrals_client.post("/internal/events/batch", content=body, headers=sent)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "invalid_signature"
    # Signed, then changed: the signature covers the whole batch.
    body, headers = signed_batch(events)
    tampered = body.replace(b"10000", b"99999")
    refused = await referrals_client.post(
        "/internal/events/batch", content=tampered, headers=headers
    )
    assert (refused.status_code, refused.json()["code"]) == (401, "invalid_signature")
    assert await _counts(referrals_client, program.merchant_id) == (0, 0)
    assert (await deliver_batch(referrals_client, events)).json()["results"][0][
        "status"
    ] == "applied"


async def test_a_batch_too_large_or_not_a_batch_is_refused_with_its_code(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, _ = await _chain(program)
    many = [
        paid(Order(program.merchant_id, f"buyer-{i}", seller["code"]), 100)
        for i in range(MAX_BATCH_EVENTS + 1)
    ]
    refused = await deliver_batch(referrals_client, many)
    assert refused.status_code == 413, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "event_batch_too_large"
    assert await _counts(referrals_client, program.merchant_id) == (0, 0)
    for shape in (b'{"events": []}', b"[]", b'{"events": 5}', b"not json"):
        headers = {SIGNATURE_HEADER: sign(TEST_EVENT_SECRET, shape)}
        answer = await referrals_client.post(
            "/internal/events/batch", content=shape, headers=headers
        )
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_event_batch"), shape
    # The largest batch allowed is taken whole.
    taken = await deliver_batch(referrals_client, many[:MAX_BATCH_EVENTS])
    assert _statuses(taken) == ["applied"] * MAX_BATCH_EVENTS
    # Two levels each: a commission and its accrual per level.
    assert await _counts(referrals_client, program.merchant_id) == (2 * MAX_BATCH_EVENTS,) * 2


async def test_an_event_that_breaks_its_contract_is_rejected_alone(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, _ = await _chain(program)
    good = paid(Order(program.merchant_id, "buyer-g", seller["code"]), 10000)
    bad = good.model_copy(update={"id": uuid.uuid4(), "payload": {**good.payload, "amount": "x"}})
    newer = good.model_copy(update={"id": uuid.uuid4(), "version": 9})
    answer = await deliver_batch(referrals_client, [bad, good, newer])
    results = answer.json()["results"]
    assert [(r["status"], r["code"]) for r in results] == [
        ("rejected", "invalid_event"),
        ("applied", None),
        ("rejected", "unknown_event_version"),
    ]
    assert "x" not in (results[0]["detail"] or "").split()
    # Nothing of the rejected ones was recorded: fixed, they apply (here: a duplicate order).
    assert (await program.balances(seller["id"]))["pending"] == 1000


async def _world(
    client: httpx.AsyncClient, auth: TokenFactory, tag: str
) -> tuple[Program, list[list[Envelope]]]:
    """A program with a chain, a suspended distributor, a leader who is a distributor and
    one who is not yet, a link, a campaign override; and three rounds of events: first
    payments, then completions, refunds and balances, then refunds after completion."""
    program = Program(client, auth)
    assert (await program.rules(leader_bps=300, level2_bps=700)).status_code == 200
    override = await client.put(
        f"/v1/commission-rules/overrides/presale/{uuid.UUID(int=1)}",
        json={"level1_bps": 1200, "level2_bps": 600, "leader_bps": 200},
        headers=program.staff,
    )
    assert override.status_code == 200, override.text
    upline = await program.join(f"{tag}upline")
    seller = await program.join(f"{tag}seller", via=upline["code"])
    other = await program.join(f"{tag}other")
    leader = await program.join(f"{tag}leader")
    suspended = await client.post(f"/v1/distributors/{other['id']}/suspend", headers=program.staff)
    assert suspended.status_code == 200
    link = await client.post(
        "/v1/referral-links",
        json={"distributor_id": seller["id"], "target_type": "general"},
        headers=auth("customer", sub=seller["user_id"]),
    )
    assert link.status_code == 201, link.text
    m = program.merchant_id

    def order(customer: str, code: str | None, pickup: str | None = None) -> Order:
        return Order(m, customer, code, pickup_leader_id=pickup)

    events: list[Envelope] = []
    o1 = order("c1", seller["code"])
    events += [paid(o1, 30000)]
    o2 = order("c2", seller["code"])
    events += [paid(o2, 20000), refunded(o2, 5000)]
    o3 = order("c3", other["code"])
    events += [paid(o3, 10000)]
    o4 = order(seller["user_id"], seller["code"])  # a self-referral
    events += [paid(o4, 10000)]
    o5 = order("c4", link.json()["code"], pickup=leader["user_id"])
    events += [paid(o5, 10000)]
    o6 = order("c5", None, pickup=f"{tag}new-leader")  # enrolled by this commission
    events += [paid(o6, 10000)]
    o7 = order("c6", upline["code"])
    o8 = order("c6", seller["code"])  # first touch: c6 stays with the upline
    events += [paid(o7, 10000), paid(o8, 10000)]
    o9 = order("c7", seller["code"])
    o9.paid = 10000
    events += [o9.event(OrderCompleted)]  # its first event: complete already
    o10 = order("c8", "NOSUCHCODE")
    events += [paid(o10, 10000)]
    o11 = order("c9", seller["code"])
    events += [o11.event(OrderCancelled, reason="expired", forfeited_amount=0)]
    o12 = order("c10", seller["code"], pickup="c10")  # the leader's own order
    events += [paid(o12, 10000)]
    o13 = order("c11", seller["code"], pickup=f"{tag}new-leader")
    events += [paid(o13, 8000)]
    later = [
        o1.event(OrderCompleted),
        refunded(o5, 2000),
        paid(o13, 2000),
        o2.event(OrderCompleted),
        refunded(o7, 10000),
        o9.event(OrderCompleted),  # again: nothing more
        o12.event(OrderCompleted),
    ]
    last = [refunded(o1, 10000), o5.event(OrderCompleted), refunded(o2, 15000)]
    return program, [events, later, last]


async def _snapshot(client: httpx.AsyncClient, program: Program, tag: str) -> dict[str, Any]:
    """Commissions and ledger entries of the merchant, with distributors named by their user
    (less the world's tag) so that two worlds compare."""
    app = client._transport.app  # type: ignore[attr-defined]
    m = program.merchant_id
    async with app.state.sessionmaker() as session:
        names = {
            r.id: r.user_id.removeprefix(tag)
            for r in await session.execute(
                select(distributor.c.id, distributor.c.user_id).where(
                    distributor.c.merchant_id == m
                )
            )
        }

        def named(account: str) -> str:
            kind, ident, rest = account.split(":", 2)
            return f"{kind}:{names[uuid.UUID(ident)] if kind == 'distributor' else 'M'}:{rest}"

        commissions = sorted(
            (names[r.distributor_id], r.payee, r.level, r.rate_bps, r.amount, r.state)
            for r in await session.execute(select(commission).where(commission.c.merchant_id == m))
        )
        entries = sorted(
            (r.kind, named(r.debit_account), named(r.credit_account), r.amount)
            for r in await session.execute(
                select(ledger_entry).where(ledger_entry.c.merchant_id == m)
            )
        )
    return {"commissions": commissions, "entries": entries}


async def test_a_batch_writes_what_the_event_by_event_path_writes(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    singly, single_rounds = await _world(referrals_client, auth, "s-")
    batched, batch_rounds = await _world(referrals_client, auth, "b-")
    # The reference: the event-by-event path itself, one transaction an event.
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    for single_events, batch_events in zip(single_rounds, batch_rounds, strict=True):
        for envelope in single_events:
            contract = contract_for(envelope.type, envelope.version)
            assert contract is not None
            event = contract.model_validate(envelope.payload)
            assert isinstance(event, OrderEvent)
            async with app.state.sessionmaker() as session, session.begin():
                await service.on_source(session, service.Source.of_order(event), str(envelope.id))
        answer = await deliver_batch(referrals_client, batch_events)
        assert set(_statuses(answer)) == {"applied"}
    one_by_one = await _snapshot(referrals_client, singly, "s-")
    at_once = await _snapshot(referrals_client, batched, "b-")
    assert at_once == one_by_one
    # What the world should hold, spelled out for a few of them.
    earned = {(who, payee, amount) for who, payee, _, _, amount, _ in at_once["commissions"]}
    assert ("seller", "distributor", 2400) in earned  # 12 % of 20,000 (the override)
    assert ("upline", "distributor", 1200) in earned  # 6 %
    assert ("leader", "leader", 160) in earned  # 2 % of 8,000
    # Enrolled by their first commission, and earning on the next (8,000 + 2,000).
    assert [c[4] for c in at_once["commissions"] if c[0] == "new-leader"] == [200, 200]
    # The refund after completion took from the available balance.
    assert ("reverse", "distributor:seller:available", "merchant:M:commission_expense", 1200) in (
        at_once["entries"]
    )
    assert not any(who == "other" for who, *_ in at_once["commissions"])  # suspended
    assert not any(who == "leader" and amount == 0 for who, _, amount in earned)
    await _reconciled(referrals_client)


async def test_a_batch_schedules_each_sources_holding_period_once(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules(holding_days=0)).status_code == 200
    seller, upline = await _chain(program)
    orders = [Order(program.merchant_id, f"buyer-h{i}", seller["code"]) for i in range(3)]
    answer = await deliver_batch(referrals_client, [paid(o, 10000) for o in orders])
    assert _statuses(answer) == ["applied"] * 3
    app = referrals_client._transport.app  # type: ignore[attr-defined]
    jobs = app.state.tables.scheduled_job
    keys = [f"order:{o.id}" for o in orders]
    async with app.state.sessionmaker() as session:
        scheduled = await session.scalar(
            select(func.count()).where(jobs.c.key.in_(keys), jobs.c.status == "pending")
        )
    assert scheduled == 3
    runner = JobRunner(
        sessionmaker=app.state.sessionmaker,
        tables=app.state.tables,
        handlers=app.state.job_handlers,
    )
    assert await runner.run_due() == 3
    assert (await program.balances(seller["id"]))["available"] == 3000
    assert (await program.balances(upline["id"]))["available"] == 1500
    assert (await program.balances(seller["id"]))["pending"] == 0
    await _reconciled(referrals_client)


async def test_batches_and_single_deliveries_of_the_same_orders_race_to_one_result(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    assert (await program.rules()).status_code == 200
    seller, upline = await _chain(program)
    # Two orders of each customer: first payments of one customer come one after the other.
    orders = [Order(program.merchant_id, f"buyer-r{i % 4}", seller["code"]) for i in range(8)]
    payments = [paid(o, 20000) for o in orders]
    refunds = [refunded(o, 5000) for o in orders]
    completions = [o.event(OrderCompleted) for o in orders]
    sent = await asyncio.gather(
        deliver_batch(referrals_client, payments[:4] + completions[4:]),
        deliver_batch(referrals_client, list(reversed(payments[4:])) + refunds[:4]),
        *(deliver(referrals_client, e) for e in refunds[4:] + completions[:4] + payments[::3]),
    )
    assert {r.status_code for r in sent} == {200}
    # Each order: 20,000 paid, 5,000 refunded, completed: 10 % and 5 % of 15,000, available.
    assert await program.balances(seller["id"]) == {
        "pending": 0,
        "available": 8 * 1500,
        "withdrawing": 0,
        "withdrawn": 0,
        "owed": 0,
    }
    assert (await program.balances(upline["id"]))["available"] == 8 * 750
    assert (await _counts(referrals_client, program.merchant_id))[0] == 16
    await _reconciled(referrals_client)
