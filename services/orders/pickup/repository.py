"""SQL of pickup leaders, their points, and the orders collected at the points."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import customer_order, pickup_leader, pickup_point

ld = pickup_leader
pt = pickup_point
o = customer_order
# A pickup order's goods are on their way to the point, or there: what the pick list shows.
TO_COLLECT = ("paid", "shipped")


@dataclass(frozen=True, slots=True)
class LeaderRow:
    id: uuid.UUID
    merchant_id: str
    user_id: str
    status: str
    real_name: str
    phone: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PointRow:
    id: uuid.UUID
    merchant_id: str
    leader_id: uuid.UUID
    name: str
    address: str
    contact_name: str
    contact_phone: str
    opening_hours: str
    active: bool
    created_at: datetime
    updated_at: datetime
    leader_user_id: str
    leader_status: str

    @property
    def accepting_orders(self) -> bool:
        """Customers may choose it: the point is active and its leader is too."""
        return self.active and self.leader_status == "active"


@dataclass(frozen=True, slots=True)
class PickRow:
    """What a pickup needs of an order, and nothing about its payments."""

    order_id: uuid.UUID
    campaign_id: uuid.UUID
    customer_id: str
    sku: str
    quantity: int
    status: str
    pickup_code: str
    pickup_arrived_at: datetime | None
    delivered_at: datetime | None


async def insert_leader(session: AsyncSession, values: Mapping[str, Any]) -> LeaderRow | None:
    """None when this user has applied to this merchant already."""
    row = (
        await session.execute(insert(ld).values(**values).on_conflict_do_nothing().returning(ld))
    ).first()
    return None if row is None else LeaderRow(**row._mapping)


async def get_leader(
    session: AsyncSession, leader_id: uuid.UUID, *, lock: bool = False
) -> LeaderRow | None:
    stmt = select(ld).where(ld.c.id == leader_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else LeaderRow(**row._mapping)


async def leader_of(session: AsyncSession, merchant_id: str, user_id: str) -> LeaderRow | None:
    row = (
        await session.execute(
            select(ld).where(ld.c.merchant_id == merchant_id, ld.c.user_id == user_id)
        )
    ).first()
    return None if row is None else LeaderRow(**row._mapping)


async def update_leader(
    session: AsyncSession, leader_id: uuid.UUID, values: Mapping[str, Any]
) -> LeaderRow:
    row = (
        await session.execute(
            update(ld)
            .where(ld.c.id == leader_id)
            .values(**values, updated_at=func.now())
            .returning(ld)
        )
    ).one()
    return LeaderRow(**row._mapping)


def leaders_query() -> Select[Any]:
    return select(ld)


def leader_columns() -> Any:
    return ld.c


def points_query() -> Select[Any]:
    """Points with their leader's user id and status (who runs it, and whether it may)."""
    return select(
        pt, ld.c.user_id.label("leader_user_id"), ld.c.status.label("leader_status")
    ).join(ld, ld.c.id == pt.c.leader_id)


def point_columns() -> Any:
    return pt.c


def merchant_points(
    merchant_id: str, *, all_of_them: bool, leader_user_id: str | None
) -> Select[Any]:
    """A merchant's points: all of them (for its staff), else those taking orders and the
    ones ``leader_user_id`` runs."""
    stmt = points_query().where(pt.c.merchant_id == merchant_id)
    if all_of_them:
        return stmt
    taking_orders = and_(pt.c.active.is_(True), ld.c.status == "active")
    if leader_user_id is None:
        return stmt.where(taking_orders)
    return stmt.where(or_(taking_orders, ld.c.user_id == leader_user_id))


async def insert_point(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(insert(pt).values(**values))


async def get_point(
    session: AsyncSession, point_id: uuid.UUID, *, lock: bool = False
) -> PointRow | None:
    stmt = points_query().where(pt.c.id == point_id)
    if lock:
        stmt = stmt.with_for_update(of=pt)
    row = (await session.execute(stmt)).first()
    return None if row is None else PointRow(**row._mapping)


async def update_point(
    session: AsyncSession, point_id: uuid.UUID, values: Mapping[str, Any]
) -> None:
    await session.execute(
        update(pt).where(pt.c.id == point_id).values(**values, updated_at=func.now())
    )


async def code_taken(session: AsyncSession, point_id: uuid.UUID, code: str) -> bool:
    found = await session.scalar(
        select(o.c.id).where(o.c.pickup_point_id == point_id, o.c.pickup_code == code)
    )
    return found is not None


async def order_by_code(
    session: AsyncSession, point_id: uuid.UUID, code: str
) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(order, campaign) of the point's order with this code."""
    row = (
        await session.execute(
            select(o.c.id, o.c.campaign_id).where(
                o.c.pickup_point_id == point_id, o.c.pickup_code == code
            )
        )
    ).first()
    return None if row is None else (row.id, row.campaign_id)


async def mark_arrived(session: AsyncSession, point_id: uuid.UUID, campaign_id: uuid.UUID) -> int:
    """The campaign's paid (or shipped) orders for this point reached it: they are shipped,
    arrived now. The caller holds the campaign's lock. Returns how many arrived."""
    now = func.now()
    rows = await session.execute(
        update(o)
        .where(
            o.c.campaign_id == campaign_id,
            o.c.pickup_point_id == point_id,
            o.c.status.in_(TO_COLLECT),
            o.c.pickup_arrived_at.is_(None),
        )
        .values(
            status="shipped",
            shipped_at=func.coalesce(o.c.shipped_at, now),
            pickup_arrived_at=now,
            updated_at=now,
        )
        .returning(o.c.id)
    )
    return len(rows.all())


def _pick_columns() -> Select[Any]:
    return select(
        o.c.id.label("order_id"),
        o.c.campaign_id,
        o.c.customer_id,
        o.c.sku,
        o.c.quantity,
        o.c.status,
        o.c.pickup_code,
        o.c.pickup_arrived_at,
        o.c.delivered_at,
    )


async def to_collect(
    session: AsyncSession, point_id: uuid.UUID, campaign_id: uuid.UUID | None
) -> list[PickRow]:
    """The point's orders still to hand over, per campaign and customer."""
    stmt = _pick_columns().where(o.c.pickup_point_id == point_id, o.c.status.in_(TO_COLLECT))
    if campaign_id is not None:
        stmt = stmt.where(o.c.campaign_id == campaign_id)
    rows = await session.execute(
        stmt.order_by(o.c.campaign_id, o.c.customer_id, o.c.created_at, o.c.id)
    )
    return [PickRow(**r._mapping) for r in rows]


async def pick_row(session: AsyncSession, order_id: uuid.UUID) -> PickRow:
    row = (await session.execute(_pick_columns().where(o.c.id == order_id))).one()
    return PickRow(**row._mapping)
