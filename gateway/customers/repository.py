"""SQL of customers and their WeChat accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import customer, wechat_account

c = customer
w = wechat_account


@dataclass(frozen=True, slots=True)
class CustomerRow:
    id: str
    unionid: str | None
    phone: str | None
    phone_country_code: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AccountRow:
    app_id: str
    openid: str
    customer_id: str


async def lock_identity(session: AsyncSession, key: str) -> None:
    """Serialises sign-ins of one person (by unionid, or app and openid) until commit, so that
    two first logins at once make one customer."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
    )


async def get_customer(session: AsyncSession, customer_id: str) -> CustomerRow | None:
    row = (await session.execute(select(c).where(c.c.id == customer_id))).one_or_none()
    return CustomerRow(**row._mapping) if row is not None else None


async def customer_by_unionid(session: AsyncSession, unionid: str) -> str | None:
    found: str | None = await session.scalar(select(c.c.id).where(c.c.unionid == unionid))
    return found


async def get_account(session: AsyncSession, app_id: str, openid: str) -> AccountRow | None:
    row = (
        await session.execute(
            select(w.c.app_id, w.c.openid, w.c.customer_id).where(
                w.c.app_id == app_id, w.c.openid == openid
            )
        )
    ).one_or_none()
    return AccountRow(**row._mapping) if row is not None else None


async def insert_customer(session: AsyncSession, customer_id: str, unionid: str | None) -> None:
    await session.execute(insert(c).values(id=customer_id, unionid=unionid))


async def insert_account(
    session: AsyncSession,
    *,
    app_id: str,
    openid: str,
    customer_id: str,
    unionid: str | None,
    session_key: str,
) -> None:
    await session.execute(
        insert(w).values(
            app_id=app_id,
            openid=openid,
            customer_id=customer_id,
            unionid=unionid,
            session_key=session_key,
        )
    )


async def touch_account(
    session: AsyncSession, *, app_id: str, openid: str, unionid: str | None, session_key: str
) -> None:
    values: dict[str, object] = {
        "session_key": session_key,
        "last_login_at": func.now(),
        "updated_at": func.now(),
    }
    if unionid is not None:
        values["unionid"] = unionid
    await session.execute(
        update(w).where(w.c.app_id == app_id, w.c.openid == openid).values(**values)
    )


async def learn_unionid(session: AsyncSession, customer_id: str, unionid: str) -> None:
    """Records the customer's unionid, unless they have one or another customer holds it."""
    taken = exists().where(c.c.unionid == unionid)
    await session.execute(
        update(c)
        .where(c.c.id == customer_id, c.c.unionid.is_(None), ~taken)
        .values(unionid=unionid, updated_at=func.now())
    )


async def set_phone(
    session: AsyncSession, customer_id: str, *, phone: str, country_code: str
) -> None:
    await session.execute(
        update(c)
        .where(c.c.id == customer_id)
        .values(phone=phone, phone_country_code=country_code, updated_at=func.now())
    )


async def apps_of(session: AsyncSession, customer_id: str) -> list[str]:
    rows = await session.scalars(
        select(w.c.app_id).where(w.c.customer_id == customer_id).order_by(w.c.created_at)
    )
    return list(rows)
