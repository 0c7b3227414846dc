"""SQL of pledges, the places they hold (items) and their refund decisions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import HOLDING, PENDING, pledge, pledge_item, pledge_refund

pl = pledge
it = pledge_item
rf = pledge_refund


@dataclass(frozen=True, slots=True)
class PledgeRow:
    id: uuid.UUID
    project_id: uuid.UUID
    merchant_id: str
    customer_id: str
    reward_id: uuid.UUID | None
    amount: int
    currency: str
    method: str
    region: str | None
    shipping_fee: int
    referral_code: str | None
    source: str | None
    status: str
    cancel_reason: str | None
    hold_expires_at: datetime
    setup_id: uuid.UUID | None
    charge_attempt: int
    charge_payment_id: uuid.UUID | None
    charge_at: datetime | None
    charge_locked_until: datetime | None
    failure_code: str | None
    first_failed_at: datetime | None
    fix_until: datetime | None
    paid: int
    paid_payment_id: uuid.UUID | None
    payment_fee: int
    refund_promised: int
    refunded_amount: int
    confirmed_at: datetime | None
    paid_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def refundable(self) -> int:
        """Paid and not promised back yet."""
        return self.paid - self.refund_promised


@dataclass(frozen=True, slots=True)
class ItemRow:
    pledge_id: uuid.UUID
    reward_id: uuid.UUID
    quantity: int
    unit_amount: int


@dataclass(frozen=True, slots=True)
class RefundRow:
    id: uuid.UUID
    pledge_id: uuid.UUID
    payment_id: uuid.UUID
    merchant_id: str
    amount: int
    reason: str
    status: str
    settlement_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


async def get_pledge(
    session: AsyncSession, pledge_id: uuid.UUID, *, lock: bool = False
) -> PledgeRow | None:
    stmt = select(pl).where(pl.c.id == pledge_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else PledgeRow(**row._mapping)


async def insert_pledge(session: AsyncSession, values: Mapping[str, Any]) -> PledgeRow | None:
    """None when a pledge with this id exists already (a concurrent retry made it)."""
    row = (
        await session.execute(
            insert(pl)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[pl.c.id])
            .returning(pl)
        )
    ).first()
    return None if row is None else PledgeRow(**row._mapping)


async def update_pledge(
    session: AsyncSession, pledge_id: uuid.UUID, values: Mapping[str, Any]
) -> PledgeRow:
    row = (
        await session.execute(
            update(pl)
            .where(pl.c.id == pledge_id)
            .values(**values, updated_at=func.now())
            .returning(pl)
        )
    ).one()
    return PledgeRow(**row._mapping)


async def project_pledges(
    session: AsyncSession, project_id: uuid.UUID, statuses: Sequence[str]
) -> list[PledgeRow]:
    """The project's pledges in ``statuses``, locked, oldest first (the caller holds the
    project's lock, so none can change state under it)."""
    rows = await session.execute(
        select(pl)
        .where(pl.c.project_id == project_id, pl.c.status.in_(statuses))
        .order_by(pl.c.created_at, pl.c.id)
        .with_for_update()
    )
    return [PledgeRow(**x._mapping) for x in rows]


def pledges_query() -> Select[Any]:
    return select(pl)


def pledge_columns() -> Any:
    return pl.c


# --- items ------------------------------------------------------------------------------


async def insert_items(session: AsyncSession, items: Sequence[ItemRow]) -> None:
    if items:
        await session.execute(
            it.insert(),
            [
                {
                    "pledge_id": x.pledge_id,
                    "reward_id": x.reward_id,
                    "quantity": x.quantity,
                    "unit_amount": x.unit_amount,
                }
                for x in items
            ],
        )


async def take_items(session: AsyncSession, pledge_id: uuid.UUID) -> list[ItemRow]:
    """Removes a pledge's items and returns them (their places are the caller's to return)."""
    rows = await session.execute(it.delete().where(it.c.pledge_id == pledge_id).returning(it))
    return [ItemRow(**x._mapping) for x in rows]


async def get_items(session: AsyncSession, pledge_ids: Sequence[uuid.UUID]) -> list[ItemRow]:
    rows = await session.execute(
        select(it).where(it.c.pledge_id.in_(pledge_ids)).order_by(it.c.pledge_id)
    )
    return [ItemRow(**x._mapping) for x in rows]


async def backer_quantity(
    session: AsyncSession, customer_id: str, reward_id: uuid.UUID, exclude: uuid.UUID | None
) -> int:
    """Places of ``reward_id`` this backer holds in live pledges (but ``exclude``)."""
    stmt = (
        select(func.coalesce(func.sum(it.c.quantity), 0))
        .join(pl, pl.c.id == it.c.pledge_id)
        .where(
            it.c.reward_id == reward_id,
            pl.c.customer_id == customer_id,
            pl.c.status.in_(HOLDING),
        )
    )
    if exclude is not None:
        stmt = stmt.where(pl.c.id != exclude)
    return int(await session.scalar(stmt) or 0)


# --- unconfirmed holds ------------------------------------------------------------------


async def expired_holds(session: AsyncSession, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(pledge, project) of unconfirmed pledges past their hold, oldest first."""
    rows = await session.execute(
        select(pl.c.id, pl.c.project_id)
        .where(pl.c.status == PENDING, pl.c.hold_expires_at <= func.now())
        .order_by(pl.c.hold_expires_at)
        .limit(limit)
    )
    return [(r.id, r.project_id) for r in rows]


async def seconds_to_next_hold_expiry(session: AsyncSession) -> float | None:
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(pl.c.hold_expires_at) - func.now())).where(
            pl.c.status == PENDING
        )
    )
    return None if seconds is None else max(0.0, float(seconds))


# --- refunds ----------------------------------------------------------------------------


async def insert_refund(session: AsyncSession, values: Mapping[str, Any]) -> RefundRow:
    row = (await session.execute(insert(rf).values(**values).returning(rf))).one()
    return RefundRow(**row._mapping)


async def get_refund(session: AsyncSession, refund_id: uuid.UUID) -> RefundRow | None:
    row = (await session.execute(select(rf).where(rf.c.id == refund_id))).first()
    return None if row is None else RefundRow(**row._mapping)


async def mark_refund_done(session: AsyncSession, refund_id: uuid.UUID) -> None:
    await session.execute(
        update(rf).where(rf.c.id == refund_id).values(status="done", updated_at=func.now())
    )


# --- reports ----------------------------------------------------------------------------


async def status_totals(session: AsyncSession, project_id: uuid.UUID) -> dict[str, tuple[int, int]]:
    """Per status: (pledges, amount)."""
    rows = await session.execute(
        select(pl.c.status, func.count(), func.coalesce(func.sum(pl.c.amount), 0))
        .where(pl.c.project_id == project_id)
        .group_by(pl.c.status)
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


async def money_totals(session: AsyncSession, project_id: uuid.UUID) -> tuple[int, int, int]:
    """(collected, refunded, payment fees) over every pledge of the project."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(pl.c.paid), 0),
                func.coalesce(func.sum(pl.c.refunded_amount), 0),
                func.coalesce(func.sum(pl.c.payment_fee), 0),
            ).where(pl.c.project_id == project_id)
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def daily(session: AsyncSession, project_id: uuid.UUID, tz: str) -> list[dict[str, Any]]:
    """Per local day of pledging: pledges that still stand (or were paid), and their amount."""
    day = func.date(func.timezone(tz, pl.c.created_at)).label("day")
    rows = await session.execute(
        select(
            day,
            func.count().label("pledges"),
            func.coalesce(func.sum(pl.c.amount), 0).label("amount"),
        )
        .where(pl.c.project_id == project_id, pl.c.status.in_(HOLDING))
        .group_by(day)
        .order_by(day)
    )
    return [dict(r._mapping) for r in rows]


async def channels(session: AsyncSession, project_id: uuid.UUID) -> list[dict[str, Any]]:
    """Per channel (referral code and source): pledges that stand, their amount, biggest
    first."""
    amount = func.coalesce(func.sum(pl.c.amount), 0).label("amount")
    rows = await session.execute(
        select(pl.c.referral_code, pl.c.source, func.count().label("pledges"), amount)
        .where(pl.c.project_id == project_id, pl.c.status.in_(HOLDING))
        .group_by(pl.c.referral_code, pl.c.source)
        .order_by(amount.desc(), pl.c.referral_code, pl.c.source)
    )
    return [dict(r._mapping) for r in rows]


async def backers(session: AsyncSession, project_id: uuid.UUID) -> list[PledgeRow]:
    """The pledges that stand (or were paid), oldest first: what fulfilment ships."""
    rows = await session.execute(
        select(pl)
        .where(pl.c.project_id == project_id, pl.c.status.in_(HOLDING))
        .order_by(pl.c.created_at, pl.c.id)
    )
    return [PledgeRow(**x._mapping) for x in rows]


async def take_unsettled_refunds(
    session: AsyncSession, merchant_id: str, currency: str, settlement_id: uuid.UUID
) -> int:
    """Assigns the merchant's refund decisions no settlement has deducted yet (of every
    project) to ``settlement_id``; returns their total."""
    taken = (
        update(rf)
        .where(
            rf.c.merchant_id == merchant_id,
            rf.c.settlement_id.is_(None),
            rf.c.pledge_id.in_(select(pl.c.id).where(pl.c.currency == currency)),
        )
        .values(settlement_id=settlement_id, updated_at=func.now())
        .returning(rf.c.amount)
        .cte("taken")
    )
    total = await session.scalar(select(func.coalesce(func.sum(taken.c.amount), 0)))
    return int(total or 0)
