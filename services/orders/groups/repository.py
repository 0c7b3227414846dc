"""SQL of group buys: a campaign's offer, its groups (with the place counters that hold N) and
their members."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import customer_order, group_buy, group_buy_offer, group_member

f = group_buy_offer
g = group_buy
m = group_member
OPEN = "open"
LEFT = "left"


@dataclass(frozen=True, slots=True)
class GroupPrice:
    sku: str
    unit_price: int
    leader_unit_price: int | None


@dataclass(frozen=True, slots=True)
class OfferRow:
    campaign_id: uuid.UUID
    group_size: int
    time_limit_minutes: int
    prices: list[GroupPrice]
    multiple_groups: bool
    virtual_completion: bool
    updated_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Row[Any]) -> OfferRow:
        values = dict(row._mapping)
        prices = [GroupPrice(**p) for p in values.pop("prices")]
        return cls(prices=prices, **values)

    def price_of(self, sku: str) -> GroupPrice | None:
        return next((p for p in self.prices if p.sku == sku), None)


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: uuid.UUID
    campaign_id: uuid.UUID
    code: str
    leader_customer_id: str
    size: int
    virtual_completion: bool
    expires_at: datetime
    status: str
    places_taken: int
    paid_members: int
    settled_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MemberRow:
    order_id: uuid.UUID
    group_id: uuid.UUID
    campaign_id: uuid.UUID
    customer_id: str
    display_name: str
    avatar_url: str | None
    leader: bool
    status: str
    paid_at: datetime | None
    left_at: datetime | None
    created_at: datetime
    updated_at: datetime


def prices_json(prices: Sequence[GroupPrice]) -> list[dict[str, Any]]:
    return [
        {"sku": p.sku, "unit_price": p.unit_price, "leader_unit_price": p.leader_unit_price}
        for p in prices
    ]


# --- offers -------------------------------------------------------------------------------


async def get_offer(session: AsyncSession, campaign_id: uuid.UUID) -> OfferRow | None:
    row = (await session.execute(select(f).where(f.c.campaign_id == campaign_id))).first()
    return None if row is None else OfferRow.of(row)


async def put_offer(
    session: AsyncSession, campaign_id: uuid.UUID, values: Mapping[str, Any]
) -> OfferRow:
    stmt = insert(f).values(campaign_id=campaign_id, **values)
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[f.c.campaign_id],
                set_={**{k: stmt.excluded[k] for k in values}, "updated_at": func.now()},
            ).returning(f)
        )
    ).one()
    return OfferRow.of(row)


# --- groups -------------------------------------------------------------------------------


async def insert_group(session: AsyncSession, values: Mapping[str, Any]) -> GroupRow | None:
    """None when the code is taken (the caller draws another)."""
    row = (
        await session.execute(
            insert(g)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[g.c.code])
            .returning(g)
        )
    ).first()
    return None if row is None else GroupRow(**row._mapping)


async def get_group(
    session: AsyncSession, group_id: uuid.UUID, *, lock: bool = False
) -> GroupRow | None:
    stmt = select(g).where(g.c.id == group_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else GroupRow(**row._mapping)


async def group_by_code(session: AsyncSession, code: str) -> GroupRow | None:
    row = (await session.execute(select(g).where(g.c.code == code))).first()
    return None if row is None else GroupRow(**row._mapping)


async def take_place(session: AsyncSession, group_id: uuid.UUID, now: datetime) -> GroupRow | None:
    """One place of an open group before its deadline, in one statement (its row stays
    locked until commit). None: not open, past its deadline or full (the caller reads why)."""
    row = (
        await session.execute(
            update(g)
            .where(
                g.c.id == group_id,
                g.c.status == OPEN,
                g.c.expires_at > now,
                g.c.places_taken < g.c.size,
            )
            .values(places_taken=g.c.places_taken + 1, updated_at=func.now())
            .returning(g)
        )
    ).first()
    return None if row is None else GroupRow(**row._mapping)


async def count_payment(session: AsyncSession, group_id: uuid.UUID) -> GroupRow | None:
    """One more paid member of an open group; None when the group is not open."""
    row = (
        await session.execute(
            update(g)
            .where(g.c.id == group_id, g.c.status == OPEN)
            .values(paid_members=g.c.paid_members + 1, updated_at=func.now())
            .returning(g)
        )
    ).first()
    return None if row is None else GroupRow(**row._mapping)


async def release_place(session: AsyncSession, group_id: uuid.UUID, *, paid: bool) -> None:
    values: dict[str, Any] = {"places_taken": g.c.places_taken - 1, "updated_at": func.now()}
    if paid:
        values["paid_members"] = g.c.paid_members - 1
    await session.execute(update(g).where(g.c.id == group_id).values(**values))


async def update_group(
    session: AsyncSession, group_id: uuid.UUID, values: Mapping[str, Any]
) -> GroupRow:
    row = (
        await session.execute(
            update(g).where(g.c.id == group_id).values(**values, updated_at=func.now()).returning(g)
        )
    ).one()
    return GroupRow(**row._mapping)


async def open_groups(session: AsyncSession, campaign_id: uuid.UUID) -> list[GroupRow]:
    """The campaign's open groups, locked (the caller holds the campaign's lock)."""
    rows = await session.execute(
        select(g)
        .where(g.c.campaign_id == campaign_id, g.c.status == OPEN)
        .order_by(g.c.expires_at, g.c.id)
        .with_for_update()
    )
    return [GroupRow(**r._mapping) for r in rows]


def joinable_query(campaign_id: uuid.UUID, now: datetime, customer_id: str | None) -> Select[Any]:
    """Open groups of a campaign with a paid member and a place left before their deadline;
    without those ``customer_id`` holds a place in."""
    stmt = select(g).where(
        g.c.campaign_id == campaign_id,
        g.c.status == OPEN,
        g.c.expires_at > now,
        g.c.places_taken < g.c.size,
        g.c.paid_members > 0,
    )
    if customer_id is not None:
        stmt = stmt.where(
            ~exists().where(
                m.c.group_id == g.c.id, m.c.customer_id == customer_id, m.c.status != LEFT
            )
        )
    return stmt


def group_columns() -> tuple[Any, Any]:
    """(sort column, key column) of paged group lists: soonest deadline first."""
    return g.c.expires_at, g.c.id


# --- members ------------------------------------------------------------------------------


async def insert_member(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(insert(m).values(**values))


async def get_member(session: AsyncSession, order_id: uuid.UUID) -> MemberRow | None:
    row = (await session.execute(select(m).where(m.c.order_id == order_id))).first()
    return None if row is None else MemberRow(**row._mapping)


async def update_member(
    session: AsyncSession, order_id: uuid.UUID, values: Mapping[str, Any]
) -> None:
    await session.execute(
        update(m).where(m.c.order_id == order_id).values(**values, updated_at=func.now())
    )


async def members(
    session: AsyncSession, group_id: uuid.UUID, statuses: Sequence[str]
) -> list[MemberRow]:
    rows = await session.execute(
        select(m)
        .where(m.c.group_id == group_id, m.c.status.in_(statuses))
        .order_by(m.c.created_at, m.c.order_id)
    )
    return [MemberRow(**r._mapping) for r in rows]


async def members_of(
    session: AsyncSession, group_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[MemberRow]]:
    """The members of several groups that have not left, in one query, each in joining order."""
    out: dict[uuid.UUID, list[MemberRow]] = {i: [] for i in group_ids}
    rows = await session.execute(
        select(m)
        .where(m.c.group_id.in_(group_ids), m.c.status != LEFT)
        .order_by(m.c.group_id, m.c.created_at, m.c.order_id)
    )
    for r in rows:
        out[r.group_id].append(MemberRow(**r._mapping))
    return out


async def holds_membership(
    session: AsyncSession,
    campaign_id: uuid.UUID,
    customer_id: str,
    group_id: uuid.UUID | None = None,
) -> bool:
    """Whether the customer is a member (of ``group_id``, or of any group of the campaign)
    whose order still stands: not left, and not ended (a failed group's orders have)."""
    o = customer_order
    conditions = [
        m.c.campaign_id == campaign_id,
        m.c.customer_id == customer_id,
        m.c.status != LEFT,
        o.c.id == m.c.order_id,
        o.c.status != "cancelled",
    ]
    if group_id is not None:
        conditions.append(m.c.group_id == group_id)
    return bool(await session.scalar(select(exists().where(*conditions))))
