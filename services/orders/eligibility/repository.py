"""SQL of eligibility: member tiers and memberships, campaign eligibility and tier rules,
purchase codes, reservations and their draw."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import (
    customer_tier,
    member_tier,
    presale_campaign,
    presale_eligibility,
    presale_reservation,
    presale_tier_rule,
    purchase_code,
)
from services.orders.presales.repository import CampaignRow

t = member_tier
m = customer_tier
e = presale_eligibility
r = presale_tier_rule
p = purchase_code
v = presale_reservation
USABLE = ("issued", "redeemed")


@dataclass(frozen=True, slots=True)
class TierRow:
    merchant_id: str
    code: str
    name: str
    rank: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MembershipRow:
    merchant_id: str
    customer_id: str
    tier_code: str | None
    set_at: datetime
    set_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EligibilityRow:
    campaign_id: uuid.UUID
    mode: str
    units_per_code: int
    reservation_places: int | None
    code_valid_hours: int
    draw_commitment: str | None
    draw_seed: str | None
    drawn_at: datetime | None
    draw_entries: int | None
    draw_digest: str | None
    updated_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TierRuleRow:
    campaign_id: uuid.UUID
    tier_code: str
    merchant_id: str
    position: int
    per_customer_limit: int | None
    unit_price: int | None


@dataclass(frozen=True, slots=True)
class CodeRow:
    id: uuid.UUID
    campaign_id: uuid.UUID
    batch_id: uuid.UUID
    source: str
    code_hash: str
    hint: str
    customer_id: str | None
    status: str
    expires_at: datetime
    order_id: uuid.UUID | None
    created_by: str
    redeemed_at: datetime | None
    used_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ReservationRow:
    id: uuid.UUID
    campaign_id: uuid.UUID
    customer_id: str
    status: str
    ticket: str | None
    rank: int | None
    code_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


# --- member tiers ---------------------------------------------------------------------


async def list_tiers(
    session: AsyncSession, merchant_id: str, *, lock: bool = False
) -> list[TierRow]:
    """The merchant's tiers, best first; ``lock``: none can be deleted until the caller's
    transaction ends (so rules that name them can be written)."""
    stmt = select(t).where(t.c.merchant_id == merchant_id).order_by(t.c.rank.desc(), t.c.code)
    if lock:
        stmt = stmt.with_for_update(read=True, key_share=True)
    return [TierRow(**x._mapping) for x in await session.execute(stmt)]


async def delete_tiers_except(session: AsyncSession, merchant_id: str, keep: list[str]) -> bool:
    """Deletes the merchant's tiers not in ``keep``; False (nothing deleted) when a member or a
    campaign still holds one of them."""
    try:
        async with session.begin_nested():
            await session.execute(
                delete(t).where(t.c.merchant_id == merchant_id, t.c.code.not_in(keep))
            )
    except IntegrityError:
        return False
    return True


async def upsert_tiers(
    session: AsyncSession, merchant_id: str, tiers: Sequence[Mapping[str, Any]]
) -> None:
    stmt = insert(t).values([dict(x, merchant_id=merchant_id) for x in tiers])
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.merchant_id, t.c.code],
            set_={"name": stmt.excluded.name, "rank": stmt.excluded.rank, "updated_at": func.now()},
        )
    )


async def get_tier(session: AsyncSession, merchant_id: str, code: str) -> TierRow | None:
    """The tier, locked against deletion until the caller's transaction ends."""
    row = (
        await session.execute(
            select(t)
            .where(t.c.merchant_id == merchant_id, t.c.code == code)
            .with_for_update(read=True, key_share=True)
        )
    ).first()
    return None if row is None else TierRow(**row._mapping)


async def get_membership(
    session: AsyncSession, merchant_id: str, customer_id: str
) -> MembershipRow | None:
    row = (
        await session.execute(
            select(m).where(m.c.merchant_id == merchant_id, m.c.customer_id == customer_id)
        )
    ).first()
    return None if row is None else MembershipRow(**row._mapping)


async def set_membership(
    session: AsyncSession,
    merchant_id: str,
    customer_id: str,
    tier_code: str | None,
    *,
    at: datetime,
    by: str,
) -> None:
    """Records the customer's tier as of ``at``, unless a later fact is stored already."""
    stmt = insert(m).values(
        merchant_id=merchant_id, customer_id=customer_id, tier_code=tier_code, set_at=at, set_by=by
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[m.c.merchant_id, m.c.customer_id],
            set_={
                "tier_code": stmt.excluded.tier_code,
                "set_at": stmt.excluded.set_at,
                "set_by": stmt.excluded.set_by,
                "updated_at": func.now(),
            },
            where=m.c.set_at <= stmt.excluded.set_at,
        )
    )


# --- campaign eligibility ------------------------------------------------------------------


async def get_eligibility(session: AsyncSession, campaign_id: uuid.UUID) -> EligibilityRow | None:
    row = (await session.execute(select(e).where(e.c.campaign_id == campaign_id))).first()
    return None if row is None else EligibilityRow(**row._mapping)


async def put_eligibility(
    session: AsyncSession, campaign_id: uuid.UUID, values: Mapping[str, Any]
) -> None:
    stmt = insert(e).values(campaign_id=campaign_id, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[e.c.campaign_id], set_={**values, "updated_at": func.now()}
        )
    )


async def update_eligibility(
    session: AsyncSession, campaign_id: uuid.UUID, values: Mapping[str, Any]
) -> None:
    await session.execute(
        update(e).where(e.c.campaign_id == campaign_id).values(**values, updated_at=func.now())
    )


async def get_tier_rules(session: AsyncSession, campaign_id: uuid.UUID) -> list[TierRuleRow]:
    rows = await session.execute(
        select(r).where(r.c.campaign_id == campaign_id).order_by(r.c.position)
    )
    return [TierRuleRow(**x._mapping) for x in rows]


async def replace_tier_rules(
    session: AsyncSession, campaign_id: uuid.UUID, rules: Sequence[Mapping[str, Any]]
) -> None:
    await session.execute(delete(r).where(r.c.campaign_id == campaign_id))
    if rules:
        await session.execute(r.insert(), [dict(x, campaign_id=campaign_id) for x in rules])


async def tier_rule_for(
    session: AsyncSession, campaign_id: uuid.UUID, merchant_id: str, customer_id: str
) -> TierRuleRow | None:
    """The campaign's rule for the tier the customer holds with its merchant, if any."""
    row = (
        await session.execute(
            select(r)
            .join(m, and_(m.c.merchant_id == r.c.merchant_id, m.c.tier_code == r.c.tier_code))
            .where(
                r.c.campaign_id == campaign_id,
                m.c.merchant_id == merchant_id,
                m.c.customer_id == customer_id,
            )
        )
    ).first()
    return None if row is None else TierRuleRow(**row._mapping)


# --- purchase codes -----------------------------------------------------------------------


async def insert_codes(session: AsyncSession, codes: Sequence[Mapping[str, Any]]) -> None:
    if codes:
        await session.execute(p.insert(), list(codes))


async def code_by_hash(session: AsyncSession, code_hash: str) -> CodeRow | None:
    row = (await session.execute(select(p).where(p.c.code_hash == code_hash))).first()
    return None if row is None else CodeRow(**row._mapping)


async def get_code(session: AsyncSession, code_id: uuid.UUID) -> CodeRow | None:
    row = (await session.execute(select(p).where(p.c.id == code_id))).first()
    return None if row is None else CodeRow(**row._mapping)


async def redeem_code(
    session: AsyncSession, campaign_id: uuid.UUID, code_hash: str, customer_id: str, now: datetime
) -> CodeRow | None:
    """Binds an issued code to ``customer_id`` in one conditional statement: of concurrent
    redemptions exactly one finds it still issued. None: not redeemable by this customer."""
    row = (
        await session.execute(
            update(p)
            .where(
                p.c.code_hash == code_hash,
                p.c.campaign_id == campaign_id,
                p.c.status == "issued",
                p.c.expires_at > now,
                or_(p.c.customer_id.is_(None), p.c.customer_id == customer_id),
            )
            .values(
                status="redeemed", customer_id=customer_id, redeemed_at=now, updated_at=func.now()
            )
            .returning(p)
        )
    ).first()
    return None if row is None else CodeRow(**row._mapping)


async def use_code(
    session: AsyncSession,
    campaign_id: uuid.UUID,
    customer_id: str,
    order_id: uuid.UUID,
    now: datetime,
    *,
    code_hash: str | None,
) -> CodeRow | None:
    """An order takes a code in one conditional statement: the one given (issued to nobody
    else, or the customer's), or else the customer's own that expires first. None: none."""
    usable = and_(p.c.campaign_id == campaign_id, p.c.status.in_(USABLE), p.c.expires_at > now)
    if code_hash is None:
        first = (
            select(p.c.id)
            .where(usable, p.c.customer_id == customer_id)
            .order_by(p.c.expires_at, p.c.id)
            .limit(1)
            .scalar_subquery()
        )
        which = and_(p.c.id == first, p.c.customer_id == customer_id)
    else:
        which = and_(
            p.c.code_hash == code_hash,
            or_(p.c.customer_id.is_(None), p.c.customer_id == customer_id),
        )
    row = (
        await session.execute(
            update(p)
            .where(usable, which)
            .values(
                status="used",
                customer_id=customer_id,
                order_id=order_id,
                used_at=now,
                redeemed_at=func.coalesce(p.c.redeemed_at, now),
                updated_at=func.now(),
            )
            .returning(p)
        )
    ).first()
    return None if row is None else CodeRow(**row._mapping)


async def release_code(session: AsyncSession, order_id: uuid.UUID) -> None:
    """The code an unpaid order held goes back to its customer."""
    await session.execute(
        update(p)
        .where(p.c.order_id == order_id, p.c.status == "used")
        .values(status="redeemed", order_id=None, used_at=None, updated_at=func.now())
    )


def codes_query(campaign_id: uuid.UUID) -> Select[Any]:
    return select(p).where(p.c.campaign_id == campaign_id)


def code_columns() -> tuple[Any, Any]:
    """(sort column, key column) for paged lists of codes."""
    return p.c.created_at, p.c.id


# --- reservations and the draw ----------------------------------------------------------


async def campaign_for_share(session: AsyncSession, campaign_id: uuid.UUID) -> CampaignRow | None:
    """The campaign, share-locked: reservations go side by side, and the draw (which takes
    the row for update) waits for those under way and then sees every one of them."""
    c = presale_campaign
    row = (
        await session.execute(select(c).where(c.c.id == campaign_id).with_for_update(read=True))
    ).first()
    return None if row is None else CampaignRow.of(row)


async def insert_reservation(
    session: AsyncSession, campaign_id: uuid.UUID, customer_id: str
) -> tuple[ReservationRow, bool]:
    """The customer's reservation, and whether it was made now (one per customer)."""
    made = (
        await session.execute(
            insert(v)
            .values(
                id=uuid.uuid4(), campaign_id=campaign_id, customer_id=customer_id, status="reserved"
            )
            .on_conflict_do_nothing(index_elements=[v.c.campaign_id, v.c.customer_id])
            .returning(v)
        )
    ).first()
    if made is not None:
        return ReservationRow(**made._mapping), True
    found = await get_reservation(session, campaign_id, customer_id)
    assert found is not None
    return found, False


async def get_reservation(
    session: AsyncSession, campaign_id: uuid.UUID, customer_id: str
) -> ReservationRow | None:
    row = (
        await session.execute(
            select(v).where(v.c.campaign_id == campaign_id, v.c.customer_id == customer_id)
        )
    ).first()
    return None if row is None else ReservationRow(**row._mapping)


async def count_reservations(session: AsyncSession, campaign_id: uuid.UUID) -> int:
    n = await session.scalar(select(func.count()).where(v.c.campaign_id == campaign_id))
    return int(n or 0)


async def entrants(session: AsyncSession, campaign_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Every reservation of the campaign: id -> customer."""
    rows = await session.execute(
        select(v.c.id, v.c.customer_id).where(v.c.campaign_id == campaign_id)
    )
    return {x.id: x.customer_id for x in rows}


async def record_draw(session: AsyncSession, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Each reservation's outcome: ``{"rid", "t", "n", "s", "code"}`` (its id, ticket, rank,
    status and code), in one statement executed for all."""
    if outcomes:
        await session.execute(
            update(v)
            .where(v.c.id == bindparam("rid"))
            .values(
                ticket=bindparam("t"),
                rank=bindparam("n"),
                status=bindparam("s"),
                code_id=bindparam("code"),
                updated_at=func.now(),
            ),
            list(outcomes),
        )


def entries_query(campaign_id: uuid.UUID) -> Select[Any]:
    """The drawn entries (ranked), for the public check of a draw."""
    return select(v.c.id, v.c.ticket, v.c.rank, v.c.status).where(
        v.c.campaign_id == campaign_id, v.c.rank.is_not(None)
    )


def entry_columns() -> tuple[Any, Any]:
    return v.c.rank, v.c.id
