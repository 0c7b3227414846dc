"""SQL of merchants and their staff (and the platform's admins)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import merchant, staff

m = merchant
s = staff


@dataclass(frozen=True, slots=True)
class MerchantRow:
    id: str
    name: str
    status: str
    contact_name: str | None
    contact_email: str | None
    contact_phone: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StaffRow:
    id: str
    merchant_id: str | None
    role: str
    status: str
    name: str
    email: str | None
    phone: str | None
    password_hash: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InvitationRow:
    staff_id: str
    token: str  # the token itself, only ever in memory
    expires_at: datetime


_STAFF = (
    s.c.id,
    s.c.merchant_id,
    s.c.role,
    s.c.status,
    s.c.name,
    s.c.email,
    s.c.phone,
    s.c.password_hash,
    s.c.created_at,
)


async def insert_merchant(session: AsyncSession, **values: Any) -> MerchantRow:
    row = (await session.execute(insert(m).values(**values).returning(m))).one()
    return MerchantRow(**row._mapping)


async def get_merchant(session: AsyncSession, merchant_id: str) -> MerchantRow | None:
    row = (await session.execute(select(m).where(m.c.id == merchant_id))).one_or_none()
    return MerchantRow(**row._mapping) if row is not None else None


async def lock_merchant(session: AsyncSession, merchant_id: str) -> bool:
    """Takes the merchant's row lock, the one every change of its staff takes first (so two
    changes never lock staff rows in opposite orders); False when no such merchant."""
    stmt = select(m.c.id).where(m.c.id == merchant_id).with_for_update()
    return (await session.execute(stmt)).first() is not None


async def update_merchant(
    session: AsyncSession, merchant_id: str, **values: Any
) -> MerchantRow | None:
    row = (
        await session.execute(
            update(m)
            .where(m.c.id == merchant_id)
            .values(**values, updated_at=func.now())
            .returning(m)
        )
    ).one_or_none()
    return MerchantRow(**row._mapping) if row is not None else None


def merchants_query() -> Select[Any]:
    return select(m)


async def insert_staff(session: AsyncSession, **values: Any) -> StaffRow:
    row = (await session.execute(insert(s).values(**values).returning(*_STAFF))).one()
    return StaffRow(**row._mapping)


async def get_staff(
    session: AsyncSession, staff_id: str, *, for_update: bool = False
) -> StaffRow | None:
    stmt = select(*_STAFF).where(s.c.id == staff_id)
    row = (await session.execute(stmt.with_for_update() if for_update else stmt)).one_or_none()
    return StaffRow(**row._mapping) if row is not None else None


async def staff_by_login(
    session: AsyncSession, *, email: str | None, phone: str | None
) -> StaffRow | None:
    """The staff member (not removed) who signs in with this email or phone."""
    login = s.c.email == email if email is not None else s.c.phone == phone
    row = (
        await session.execute(select(*_STAFF).where(login, s.c.status != "removed"))
    ).one_or_none()
    return StaffRow(**row._mapping) if row is not None else None


async def staff_by_invitation(session: AsyncSession, invite_hash: str) -> StaffRow | None:
    row = (
        await session.execute(
            select(*_STAFF)
            .where(
                s.c.invite_hash == invite_hash,
                s.c.status == "invited",
                s.c.invite_expires_at > func.now(),
            )
            .with_for_update()
        )
    ).one_or_none()
    return StaffRow(**row._mapping) if row is not None else None


def staff_query() -> Select[Any]:
    return select(*_STAFF).where(s.c.status != "removed")


async def lock_owners(session: AsyncSession, merchant_id: str) -> list[str]:
    """The ids of the merchant's active owners, locked: two owners demoting each other at
    once are checked one after the other."""
    rows = await session.scalars(
        select(s.c.id)
        .where(s.c.merchant_id == merchant_id, s.c.role == "owner", s.c.status == "active")
        .order_by(s.c.id)
        .with_for_update()
    )
    return list(rows)


async def update_staff(session: AsyncSession, staff_id: str, **values: Any) -> StaffRow:
    row = (
        await session.execute(
            update(s)
            .where(s.c.id == staff_id)
            .values(**values, updated_at=func.now())
            .returning(*_STAFF)
        )
    ).one()
    return StaffRow(**row._mapping)
