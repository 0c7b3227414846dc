"""SQL of withdrawals."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.models import distributor, withdrawal

w = withdrawal


@dataclass(frozen=True, slots=True)
class WithdrawalRow:
    id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    amount: int
    fee: int
    taken_back: int
    currency: str
    status: str
    requested_by: str
    decided_by: str | None
    reason: str | None
    external_reference: str | None
    paid_at: datetime | None
    payout_account: str | None
    reversed_amount: int
    created_at: datetime
    updated_at: datetime


async def insert(session: AsyncSession, values: Mapping[str, Any]) -> WithdrawalRow:
    row = (await session.execute(w.insert().values(**values).returning(w))).one()
    return WithdrawalRow(**row._mapping)


async def get(
    session: AsyncSession, withdrawal_id: uuid.UUID, *, lock: bool = False
) -> WithdrawalRow | None:
    stmt = select(w).where(w.c.id == withdrawal_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else WithdrawalRow(**row._mapping)


async def update_withdrawal(
    session: AsyncSession, withdrawal_id: uuid.UUID, values: Mapping[str, Any]
) -> WithdrawalRow:
    row = (
        await session.execute(
            update(w)
            .where(w.c.id == withdrawal_id)
            .values(**values, updated_at=func.now())
            .returning(w)
        )
    ).one()
    return WithdrawalRow(**row._mapping)


def withdrawals_query() -> Select[Any]:
    return select(w).join(distributor, distributor.c.id == w.c.distributor_id)


def columns() -> Any:
    return w.c


def distributor_user_column() -> Any:
    return distributor.c.user_id


async def count_by_status(session: AsyncSession, merchant_id: str, status: str) -> int:
    found = await session.scalar(
        select(func.count()).where(w.c.merchant_id == merchant_id, w.c.status == status)
    )
    return int(found or 0)
