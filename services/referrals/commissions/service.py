"""Commissions from order and pledge events, on a double-entry ledger.

Orders and crowdfunding pledges earn alike (a :class:`Source`; a pledge's rates are its
project's). Attribution happens once per source, at the first event that shows money paid:
the referral code given at checkout and the customer's binding (锁客) decide the level-1
distributor under the merchant's rule (first or last touch); their upline is level 2. Never
a third level: the upline's upline is never read. A self-referral (the buyer is the
distributor, or their upline) earns nothing and is flagged; a suspended distributor earns
nothing new.

Amounts are cumulative, which makes events order-free: every order event carries the order's
paid and refunded totals, both only ever grow, so the attribution keeps the highest of each
seen, and each commission is brought to

    floor((paid_total - refunded_total) * rate_bps / 10000)

by posting the difference. Rounding: down, per level, on the cumulative net amount (never
per refund), so any sequence of partial refunds reverses exactly what was paid on the fen,
a full refund leaves exactly zero, and no level ever holds more than its rate. An event that
arrives late (a paid event after its refund), twice, or replayed changes nothing.

Ledger accounts: ``merchant:<m>:commission_expense`` pays ``distributor:<d>:pending``
(accrue); ``pending`` moves to ``available`` when the order completes or its holding period
ends (release); a refund
takes back from where the commission is (reverse), and what the distributor has already
withdrawn becomes ``owed`` (to be taken from the next withdrawal).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions import repository as repo
from services.referrals.commissions.repository import AttributionRow, CommissionRow
from services.referrals.links import repository as links
from services.referrals.models import platform
from services.referrals.programs import repository as programs
from services.referrals.programs.repository import ProgramRow
from services.referrals.programs.schemas import Balances
from services.referrals.programs.service import leader_payee, rates_for
from shared.events.contracts import OrderCompleted, OrderEvent, PledgeEvent
from shared.scheduler import Job, schedule

ORDER, PLEDGE = "order", "pledge"  # what a commission is earned on
RELEASE_JOB = "commission.release"
DEFAULT_PLEDGE_HOLDING_DAYS = 7  # a pledge has no completion: its commissions wait this long
DISTRIBUTOR, LEADER = "distributor", "leader"  # who a commission pays
BPS = 10_000


def now_utc() -> datetime:
    return datetime.now(UTC)


def target_amount(paid_total: int, refunded_total: int, rate_bps: int) -> int:
    """The commission a level holds: rounded down on the cumulative net amount."""
    return max(0, paid_total - refunded_total) * rate_bps // BPS


def expense_account(merchant_id: str) -> str:
    return f"merchant:{merchant_id}:commission_expense"


def account(distributor_id: uuid.UUID, name: str) -> str:
    return f"distributor:{distributor_id}:{name}"


@dataclass(frozen=True, slots=True)
class Source:
    """What commissions need of an order or a pledge event (both carry cumulative totals)."""

    type: str  # order | pledge
    id: uuid.UUID
    merchant_id: str
    customer_id: str
    currency: str
    referral_code: str | None
    paid_total: int
    refunded_total: int
    # Whose override applies: a pre-sale campaign's or a crowdfunding project's.
    target_type: str  # presale | project
    target_id: str
    leader_user_id: str | None = None
    completed: bool = False

    @classmethod
    def of_order(cls, event: OrderEvent) -> Source:
        return cls(
            ORDER,
            event.order_id,
            event.merchant_id,
            event.customer_id,
            event.currency,
            event.referral_code,
            event.paid_total,
            event.refunded_total,
            "presale",
            str(event.campaign_id),
            event.pickup_leader_id,
            isinstance(event, OrderCompleted),
        )

    @classmethod
    def of_pledge(cls, event: PledgeEvent) -> Source:
        return cls(
            PLEDGE,
            event.pledge_id,
            event.merchant_id,
            event.customer_id,
            event.currency,
            event.referral_code,
            event.paid_total,
            event.refunded_total,
            "project",
            str(event.project_id),
        )


async def on_source(session: AsyncSession, source: Source, event_id: str) -> None:
    """One event of an order or a pledge: attribute (once), take its totals, settle every
    level; a completed order's commissions become available. (Deliveries come through
    commissions/batch.py, which does the common case for many events at once.)"""
    rules = await programs.get_program(session, source.merchant_id)
    if rules is None:
        return  # the merchant runs no program
    attr = await repo.get_attribution(session, source.type, source.id, lock=True)
    if attr is None:
        if source.paid_total == 0:
            return  # nothing was paid (an unpaid order cancelled): nothing to earn
        attr = await _attribute(session, rules, source)
    values: dict[str, object] = {
        "paid_total": max(attr.paid_total, source.paid_total),
        "refunded_total": max(attr.refunded_total, source.refunded_total),
        "completed": attr.completed or source.completed,
    }
    if attr.completed and source.refunded_total > attr.refunded_total:
        values["refunded_after_completion_at"] = now_utc()
    attr = await repo.update_attribution(session, source.type, source.id, values)
    for level in await repo.commissions_of(session, source.type, source.id):
        await _settle(session, attr, level, event_id)


async def release_held(session: AsyncSession, job: Job) -> None:
    """The holding period of a source ended: its commissions become available, as if it had
    completed (whichever comes first releases; the other then changes nothing). What refunds
    took back stays taken; a later refund reverses from available, or makes it owed."""
    source_type, _, source_id = job.key.partition(":")
    attr = await repo.get_attribution(session, source_type, uuid.UUID(source_id), lock=True)
    if attr is None or attr.completed:
        return
    attr = await repo.update_attribution(session, source_type, attr.source_id, {"completed": True})
    for level in await repo.commissions_of(session, source_type, attr.source_id):
        await _settle(session, attr, level, f"job:{job.id}")


def hold_until(rules: ProgramRow, source_type: str, now: datetime) -> datetime | None:
    """The end of a source's holding period, counted from its first payment (None: an
    order's commissions wait for its completion)."""
    days = rules.holding_days
    if days is None and source_type == ORDER:
        return None
    return now + timedelta(days=DEFAULT_PLEDGE_HOLDING_DAYS if days is None else days)


async def _hold(
    session: AsyncSession, rules: ProgramRow, source_type: str, source_id: uuid.UUID
) -> None:
    """Schedules the end of the holding period, counted from the first payment."""
    run_at = hold_until(rules, source_type, now_utc())
    if run_at is not None:
        await schedule(
            session, platform, kind=RELEASE_JOB, key=f"{source_type}:{source_id}", run_at=run_at
        )


async def bind_by_rule(
    session: AsyncSession,
    rules: ProgramRow,
    customer_id: str,
    distributor_id: uuid.UUID,
    now: datetime,
) -> uuid.UUID | None:
    """A customer arrives through a distributor (a link, a code at checkout): under
    ``last_touch`` they are bound to that one; under ``first_touch`` a live binding stays.
    Returns who the customer is bound to now."""
    bound_id = await repo.binding(session, rules.merchant_id, customer_id, now)
    if rules.attribution == "first_touch" and bound_id is not None:
        return bound_id
    await repo.bind(
        session,
        rules.merchant_id,
        customer_id,
        distributor_id,
        now,
        now + timedelta(days=rules.binding_days),
    )
    return distributor_id


async def _attribute(session: AsyncSession, rules: ProgramRow, source: Source) -> AttributionRow:
    now = now_utc()
    coded_id, link_id = await _code_owner(session, source.merchant_id, source.referral_code)
    chosen_id = (
        await bind_by_rule(session, rules, source.customer_id, coded_id, now)
        if coded_id is not None
        else await repo.binding(session, source.merchant_id, source.customer_id, now)
    )
    seller = None if chosen_id is None else await programs.get_distributor(session, chosen_id)
    upline = (
        None
        if seller is None or seller.upline_id is None
        else await programs.get_distributor(session, seller.upline_id)
    )
    self_referral = seller is not None and source.customer_id in (
        seller.user_id,
        upline.user_id if upline else None,
    )
    # The leader earns for the pickup, next to the chain and whatever the chain's flags;
    # never on their own order.
    leader = (
        await leader_payee(session, source.merchant_id, source.leader_user_id)
        if source.leader_user_id and source.leader_user_id != source.customer_id
        else None
    )
    values = {
        "source_type": source.type,
        "source_id": source.id,
        "merchant_id": source.merchant_id,
        "customer_id": source.customer_id,
        "distributor_id": seller.id if seller else None,
        "upline_id": upline.id if upline else None,
        "link_id": link_id if chosen_id == coded_id else None,
        "leader_id": leader.id if leader else None,
        "self_referral": self_referral,
        "paid_total": 0,
        "refunded_total": 0,
        "currency": source.currency,
        "completed": False,
    }
    if await repo.insert_attribution(session, values):
        await _hold(session, rules, source.type, source.id)
        level1, level2, leader_rate = await rates_for(
            session, rules, source.target_type, source.target_id
        )
        payees = (
            []
            if self_referral
            else [(DISTRIBUTOR, 1, seller, level1), (DISTRIBUTOR, 2, upline, level2)]
        )
        payees.append((LEADER, 1, leader, leader_rate))
        for payee, level, who, rate in payees:
            if who is not None and who.status == "active" and rate > 0:
                await repo.insert_commission(
                    session,
                    {
                        "id": uuid.uuid4(),
                        "source_type": source.type,
                        "source_id": source.id,
                        "merchant_id": source.merchant_id,
                        "distributor_id": who.id,
                        "level": level,
                        "payee": payee,
                        "rate_bps": rate,
                        "currency": source.currency,
                        "amount": 0,
                        "state": "pending",
                    },
                )
    # Inserted now, or by a concurrent delivery a moment ago: either way, locked from here.
    decided = await repo.get_attribution(session, source.type, source.id, lock=True)
    assert decided is not None
    return decided


async def _code_owner(
    session: AsyncSession, merchant_id: str, code: str | None
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """(distributor, link) a checkout code names: a distributor's own code or a link's."""
    if not code:
        return None, None
    found = await programs.distributor_by_code(session, code)
    if found is not None:
        return (found.id, None) if found.merchant_id == merchant_id else (None, None)
    link = await links.link_by_code(session, code)
    if link is None or link.merchant_id != merchant_id:
        return None, None
    return link.distributor_id, link.id


async def _settle(
    session: AsyncSession, attr: AttributionRow, level: CommissionRow, event_id: str
) -> None:
    target = target_amount(attr.paid_total, attr.refunded_total, level.rate_bps)
    delta = target - level.amount
    state = level.state
    base = {
        "merchant_id": level.merchant_id,
        "commission_id": level.id,
        "source_event": event_id,
        "currency": level.currency,
    }
    expense = expense_account(level.merchant_id)
    if delta > 0:
        held = account(level.distributor_id, state)
        await repo.post(
            session,
            {
                **base,
                "kind": "accrue",
                "debit_account": expense,
                "credit_account": held,
                "amount": delta,
            },
        )
    elif delta < 0:
        await _reverse(session, level, -delta, base, expense)
    if attr.completed and state == "pending":
        # The order completed: what the level holds becomes available.
        if target > 0:
            await repo.post(
                session,
                {
                    **base,
                    "kind": "release",
                    "debit_account": account(level.distributor_id, "pending"),
                    "credit_account": account(level.distributor_id, "available"),
                    "amount": target,
                },
            )
        state = "available"
    if target != level.amount or state != level.state:
        await repo.update_commission(session, level.id, {"amount": target, "state": state})


async def _reverse(
    session: AsyncSession,
    level: CommissionRow,
    amount: int,
    base: dict[str, object],
    expense: str,
) -> None:
    """Takes ``amount`` back from where the commission is; what was withdrawn meanwhile
    becomes owed by the distributor (taken from their next withdrawal)."""
    if level.state == "pending":
        parts = [(account(level.distributor_id, "pending"), amount)]
    else:
        # The distributor's lock: a withdrawal moving the same money waits, or goes first.
        await programs.get_distributor(session, level.distributor_id, lock=True)
        available = await repo.balance(session, account(level.distributor_id, "available"))
        from_available = min(amount, max(0, available))
        parts = [
            (account(level.distributor_id, "available"), from_available),
            (account(level.distributor_id, "owed"), amount - from_available),
        ]
    for debit, part in parts:
        if part > 0:
            await repo.post(
                session,
                {
                    **base,
                    "kind": "reverse",
                    "debit_account": debit,
                    "credit_account": expense,
                    "amount": part,
                },
            )


_ACCOUNTS = ("pending", "available", "withdrawing", "withdrawn", "owed")


async def balances_of(
    session: AsyncSession, distributor_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Balances]:
    """Distributors' balances, derived from the ledger (never stored), in one query."""
    totals = await repo.balances(
        session, [account(d, name) for d in distributor_ids for name in _ACCOUNTS]
    )

    def of(d: uuid.UUID, name: str) -> int:
        return totals.get(account(d, name), 0)

    return {
        d: Balances(
            pending=of(d, "pending"),
            available=of(d, "available"),
            withdrawing=of(d, "withdrawing"),
            withdrawn=of(d, "withdrawn"),
            owed=-of(d, "owed"),
        )
        for d in distributor_ids
    }


async def balances(session: AsyncSession, distributor_id: uuid.UUID) -> Balances:
    return (await balances_of(session, [distributor_id]))[distributor_id]
