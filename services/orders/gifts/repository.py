"""SQL of gifts (送人) and the merchants' gift terms."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.models import customer_order, gift_policy, order_gift

g = order_gift
o = customer_order
gp = gift_policy


@dataclass(frozen=True, slots=True)
class GiftRow:
    order_id: uuid.UUID
    message: str
    token: str
    status: str
    on_unclaimed: str
    claim_by: datetime
    recipient_id: str | None
    recipient_address: dict[str, Any] | None
    claimed_at: datetime | None
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyRow:
    merchant_id: str
    claim_days: int
    on_unclaimed: str
    updated_by: str
    created_at: datetime
    updated_at: datetime


async def insert_gift(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(insert(g).values(**values))


async def get_gift(
    session: AsyncSession, order_id: uuid.UUID, *, lock: bool = False
) -> GiftRow | None:
    stmt = select(g).where(g.c.order_id == order_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else GiftRow(**row._mapping)


async def gift_by_token(session: AsyncSession, token: str) -> GiftRow | None:
    row = (await session.execute(select(g).where(g.c.token == token))).first()
    return None if row is None else GiftRow(**row._mapping)


async def claim(
    session: AsyncSession,
    token: str,
    recipient_id: str,
    address: Mapping[str, Any],
    claimable: tuple[str, ...],
) -> GiftRow | None:
    """Claims the gift in one conditional statement: still unclaimed, its order in a
    ``claimable`` state, the claimer not its buyer. None when any of that fails."""
    row = (
        await session.execute(
            update(g)
            .where(
                g.c.token == token,
                g.c.status == "awaiting_claim",
                o.c.id == g.c.order_id,
                o.c.customer_id != recipient_id,
                o.c.status.in_(claimable),
            )
            .values(
                status="claimed",
                recipient_id=recipient_id,
                recipient_address=dict(address),
                claimed_at=func.now(),
                updated_at=func.now(),
            )
            .returning(g)
        )
    ).first()
    return None if row is None else GiftRow(**row._mapping)


async def update_gift(
    session: AsyncSession, order_id: uuid.UUID, values: Mapping[str, Any]
) -> GiftRow:
    row = (
        await session.execute(
            update(g)
            .where(g.c.order_id == order_id)
            .values(**values, updated_at=func.now())
            .returning(g)
        )
    ).one()
    return GiftRow(**row._mapping)


async def get_policy(session: AsyncSession, merchant_id: str) -> PolicyRow | None:
    row = (await session.execute(select(gp).where(gp.c.merchant_id == merchant_id))).first()
    return None if row is None else PolicyRow(**row._mapping)


async def put_policy(
    session: AsyncSession, merchant_id: str, values: Mapping[str, Any]
) -> PolicyRow:
    stmt = insert(gp).values(merchant_id=merchant_id, **values)
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[gp.c.merchant_id], set_={**values, "updated_at": func.now()}
            ).returning(gp)
        )
    ).one()
    return PolicyRow(**row._mapping)
