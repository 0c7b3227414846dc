"""SQL of settlement statements and their payout records."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import settlement

s = settlement


@dataclass(frozen=True, slots=True)
class SettlementRow:
    id: uuid.UUID
    project_id: uuid.UUID
    merchant_id: str
    currency: str
    collected: int
    refunds: int
    platform_fee_bps: int
    platform_fee: int
    payment_fees: int
    payout: int
    pledges_collected: int
    pledges_dropped: int
    status: str
    external_reference: str | None
    paid_by: str | None
    paid_at: datetime | None
    payout_account: str | None
    payout_attempt: int
    failure_reason: str | None
    reversed_amount: int
    created_at: datetime
    updated_at: datetime


async def insert_settlement(session: AsyncSession, values: Mapping[str, Any]) -> SettlementRow:
    row = (await session.execute(s.insert().values(**values).returning(s))).one()
    return SettlementRow(**row._mapping)


async def get_settlement(
    session: AsyncSession, settlement_id: uuid.UUID, *, lock: bool = False
) -> SettlementRow | None:
    stmt = select(s).where(s.c.id == settlement_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else SettlementRow(**row._mapping)


async def project_settlement(session: AsyncSession, project_id: uuid.UUID) -> SettlementRow | None:
    row = (await session.execute(select(s).where(s.c.project_id == project_id))).first()
    return None if row is None else SettlementRow(**row._mapping)


async def update_settlement(
    session: AsyncSession, settlement_id: uuid.UUID, values: Mapping[str, Any]
) -> SettlementRow:
    row = (
        await session.execute(
            update(s)
            .where(s.c.id == settlement_id)
            .values(**values, updated_at=func.now())
            .returning(s)
        )
    ).one()
    return SettlementRow(**row._mapping)


def settlements_query() -> Select[Any]:
    return select(s)


def settlement_columns() -> Any:
    return s.c
