"""SQL of referral links."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.models import attribution, distributor, referral_link

k = referral_link


@dataclass(frozen=True, slots=True)
class LinkRow:
    id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    code: str
    target_type: str
    target_id: str | None
    clicks: int
    created_at: datetime
    updated_at: datetime


async def insert_link(session: AsyncSession, values: Mapping[str, Any]) -> LinkRow | None:
    """None when the code is taken (the caller tries another)."""
    row = (
        await session.execute(insert(k).values(**values).on_conflict_do_nothing().returning(k))
    ).first()
    return None if row is None else LinkRow(**row._mapping)


async def link_by_code(session: AsyncSession, code: str) -> LinkRow | None:
    row = (await session.execute(select(k).where(k.c.code == code))).first()
    return None if row is None else LinkRow(**row._mapping)


async def links_by_code(session: AsyncSession, codes: Collection[str]) -> dict[str, LinkRow]:
    rows = await session.execute(select(k).where(k.c.code.in_(list(codes))))
    return {r.code: LinkRow(**r._mapping) for r in rows}


async def count_click(session: AsyncSession, code: str) -> LinkRow | None:
    row = (
        await session.execute(
            update(k).where(k.c.code == code).values(clicks=k.c.clicks + 1).returning(k)
        )
    ).first()
    return None if row is None else LinkRow(**row._mapping)


def links_query() -> Select[Any]:
    """Links with their conversions (paid orders attributed through them)."""
    conversions = (
        select(func.count())
        .where(attribution.c.link_id == k.c.id)
        .correlate(k)
        .scalar_subquery()
        .label("conversions")
    )
    return select(k, conversions).join(distributor, distributor.c.id == k.c.distributor_id)


def columns() -> Any:
    return k.c


def distributor_user_column() -> Any:
    return distributor.c.user_id
