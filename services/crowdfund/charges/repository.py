"""SQL of the deadline's charges: claiming due charges under a lease, the shared throttle,
the fix windows that end."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import (
    CHARGE_DUE,
    CHARGEABLE,
    CHARGING,
    CONFIRMED,
    PAYMENT_FAILED,
    charge_throttle,
    pledge,
    project,
)
from services.crowdfund.pledges.repository import PledgeRow

pl = pledge
THROTTLE = "provider_charges"


@dataclass(frozen=True, slots=True)
class Claim:
    """A pledge a worker holds the charge of, until ``lease`` (also its token: a write that
    does not find it there has lost the pledge to another worker)."""

    pledge: PledgeRow
    was: str  # the status it was claimed from
    lease: datetime


def _not_suspended() -> Any:
    return ~exists(select(project.c.id).where(project.c.id == pl.c.project_id, project.c.suspended))


async def mark_charges_due(session: AsyncSession, project_id: uuid.UUID, now: datetime) -> int:
    """Every saved-card pledge of a project that succeeded becomes due now (one statement)."""
    result = await session.execute(
        update(pl)
        .where(pl.c.project_id == project_id, pl.c.status == CONFIRMED)
        .values(status=CHARGE_DUE, charge_at=now, updated_at=func.now())
        .returning(pl.c.id)
    )
    return len(result.all())


async def claim_charges(session: AsyncSession, limit: int, lease: timedelta) -> list[Claim]:
    """Leases up to ``limit`` due charges to this worker (``FOR UPDATE SKIP LOCKED``: any
    number of workers share them): charges due at the deadline, charges whose worker's lease
    ran out (resumed with the same attempt), and retries due in a fix window. Pledges of a
    suspended project wait."""
    now = func.now()
    due = (
        select(pl.c.id, pl.c.status.label("was"))
        .where(
            or_(
                and_(pl.c.status == CHARGE_DUE, pl.c.charge_at <= now),
                and_(pl.c.status == CHARGING, pl.c.charge_locked_until <= now),
                and_(
                    pl.c.status == PAYMENT_FAILED,
                    pl.c.charge_at <= now,
                    pl.c.fix_until > now,
                    or_(pl.c.charge_locked_until.is_(None), pl.c.charge_locked_until <= now),
                ),
            ),
            _not_suspended(),
        )
        .order_by(pl.c.charge_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    rows = await session.execute(
        update(pl)
        .where(pl.c.id == due.c.id)
        .values(status=CHARGING, charge_locked_until=now + lease, updated_at=now)
        .returning(*pl.c, due.c.was)
    )
    claims = []
    for row in rows:
        values = dict(row._mapping)
        was = values.pop("was")
        claimed = PledgeRow(**values)
        assert claimed.charge_locked_until is not None
        claims.append(Claim(pledge=claimed, was=was, lease=claimed.charge_locked_until))
    return claims


async def claim_one(session: AsyncSession, pledge_id: uuid.UUID, lease: timedelta) -> Claim | None:
    """The backer's own attempt in the fix window: leases one failed pledge, unless a worker
    holds it now."""
    now = func.now()
    row = (
        await session.execute(
            update(pl)
            .where(
                pl.c.id == pledge_id,
                pl.c.status == PAYMENT_FAILED,
                pl.c.fix_until > now,
                or_(pl.c.charge_locked_until.is_(None), pl.c.charge_locked_until <= now),
            )
            .values(status=CHARGING, charge_locked_until=now + lease, updated_at=now)
            .returning(pl)
        )
    ).first()
    if row is None:
        return None
    claimed = PledgeRow(**row._mapping)
    assert claimed.charge_locked_until is not None
    return Claim(pledge=claimed, was=PAYMENT_FAILED, lease=claimed.charge_locked_until)


async def update_claimed(session: AsyncSession, claim: Claim, values: dict[str, Any]) -> bool:
    """Writes to a claimed pledge while the claim still holds it; False when it does not."""
    result = await session.execute(
        update(pl)
        .where(
            pl.c.id == claim.pledge.id,
            pl.c.status == CHARGING,
            pl.c.charge_locked_until == claim.lease,
        )
        .values(**values, updated_at=func.now())
        .returning(pl.c.id)
    )
    return result.first() is not None


async def take_slots(session: AsyncSession, count: int, interval: timedelta) -> float:
    """Takes ``count`` consecutive slots of the provider's rate for this worker; returns the
    seconds until the first (the i-th is ``i * interval`` later). One row, shared by every
    worker, so the rate holds however many run."""
    t = charge_throttle
    span = interval * count
    stmt = insert(t).values(name=THROTTLE, next_slot_at=func.now() + span)
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[t.c.name],
                set_={"next_slot_at": func.greatest(t.c.next_slot_at, func.now()) + span},
            ).returning(func.extract("epoch", t.c.next_slot_at - func.now()))
        )
    ).one()
    return max(0.0, float(row[0]) - span.total_seconds())


async def due_drops(session: AsyncSession, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(pledge, project) of failed pledges whose fix window has ended."""
    rows = await session.execute(
        select(pl.c.id, pl.c.project_id)
        .where(
            pl.c.status == PAYMENT_FAILED,
            pl.c.fix_until <= func.now(),
            or_(pl.c.charge_locked_until.is_(None), pl.c.charge_locked_until <= func.now()),
            _not_suspended(),
        )
        .order_by(pl.c.fix_until)
        .limit(limit)
    )
    return [(r.id, r.project_id) for r in rows]


async def seconds_to_next_charge(session: AsyncSession) -> float | None:
    """Until a charge, a lease's end, a retry or a fix window's end is next due."""
    when = case(
        (pl.c.status == CHARGING, pl.c.charge_locked_until),
        (pl.c.status == PAYMENT_FAILED, func.least(pl.c.charge_at, pl.c.fix_until)),
        else_=pl.c.charge_at,
    )
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(when) - func.now())).where(
            pl.c.status.in_(CHARGEABLE)
        )
    )
    return None if seconds is None else max(0.0, float(seconds))
