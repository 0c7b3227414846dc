"""SQL of referral programs and distributors."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.models import commission_override, distributor, referral_program

p = referral_program
d = distributor


@dataclass(frozen=True, slots=True)
class ProgramRow:
    merchant_id: str
    enrollment: str
    attribution: str
    binding_days: int
    level1_bps: int
    level2_bps: int
    leader_bps: int
    max_total_bps: int
    currency: str
    min_withdrawal: int
    withdrawal_fee: int
    holding_days: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DistributorRow:
    id: uuid.UUID
    merchant_id: str
    user_id: str
    code: str
    upline_id: uuid.UUID | None
    status: str
    real_name: str
    phone: str
    added_by: str | None
    decided_by: str | None
    kyc_verified_by: str | None
    kyc_verified_at: datetime | None
    payout_account: str | None
    payout_account_set_by: str | None
    created_at: datetime
    updated_at: datetime


async def get_program(session: AsyncSession, merchant_id: str) -> ProgramRow | None:
    row = (await session.execute(select(p).where(p.c.merchant_id == merchant_id))).first()
    return None if row is None else ProgramRow(**row._mapping)


async def programs_of(
    session: AsyncSession, merchant_ids: Collection[str]
) -> dict[str, ProgramRow]:
    rows = await session.execute(select(p).where(p.c.merchant_id.in_(list(merchant_ids))))
    return {r.merchant_id: ProgramRow(**r._mapping) for r in rows}


async def put_program(
    session: AsyncSession, merchant_id: str, values: Mapping[str, Any]
) -> ProgramRow:
    stmt = insert(p).values(merchant_id=merchant_id, **values)
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[p.c.merchant_id], set_={**values, "updated_at": func.now()}
            ).returning(p)
        )
    ).one()
    return ProgramRow(**row._mapping)


async def insert_distributor(
    session: AsyncSession, values: Mapping[str, Any]
) -> DistributorRow | None:
    """None when this user is a distributor of this merchant already (or the code is taken)."""
    row = (
        await session.execute(insert(d).values(**values).on_conflict_do_nothing().returning(d))
    ).first()
    return None if row is None else DistributorRow(**row._mapping)


async def get_distributor(
    session: AsyncSession, distributor_id: uuid.UUID, *, lock: bool = False
) -> DistributorRow | None:
    stmt = select(d).where(d.c.id == distributor_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else DistributorRow(**row._mapping)


async def distributor_by_code(session: AsyncSession, code: str) -> DistributorRow | None:
    row = (await session.execute(select(d).where(d.c.code == code))).first()
    return None if row is None else DistributorRow(**row._mapping)


async def distributors_by_code(
    session: AsyncSession, codes: Collection[str]
) -> dict[str, DistributorRow]:
    rows = await session.execute(select(d).where(d.c.code.in_(list(codes))))
    return {r.code: DistributorRow(**r._mapping) for r in rows}


async def distributors_and_uplines(
    session: AsyncSession, ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, DistributorRow]:
    """The distributors ``ids`` and their uplines (never further up), in one query."""
    wanted = list(ids)
    uplines = select(d.c.upline_id).where(d.c.id.in_(wanted), d.c.upline_id.is_not(None))
    rows = await session.execute(select(d).where(d.c.id.in_(wanted) | d.c.id.in_(uplines)))
    return {r.id: DistributorRow(**r._mapping) for r in rows}


async def distributors_of_users(
    session: AsyncSession, pairs: Collection[tuple[str, str]]
) -> dict[tuple[str, str], DistributorRow]:
    """The distributor records of (merchant, user) pairs that have one."""
    rows = await session.execute(
        select(d).where(tuple_(d.c.merchant_id, d.c.user_id).in_(list(pairs)))
    )
    return {(r.merchant_id, r.user_id): DistributorRow(**r._mapping) for r in rows}


async def distributor_of(
    session: AsyncSession, merchant_id: str, user_id: str
) -> DistributorRow | None:
    row = (
        await session.execute(
            select(d).where(d.c.merchant_id == merchant_id, d.c.user_id == user_id)
        )
    ).first()
    return None if row is None else DistributorRow(**row._mapping)


async def update_distributor(
    session: AsyncSession, distributor_id: uuid.UUID, values: Mapping[str, Any]
) -> DistributorRow:
    row = (
        await session.execute(
            update(d)
            .where(d.c.id == distributor_id)
            .values(**values, updated_at=func.now())
            .returning(d)
        )
    ).one()
    return DistributorRow(**row._mapping)


def distributors_query() -> Select[Any]:
    return select(d)


def distributor_columns() -> Any:
    return d.c


async def team(
    session: AsyncSession, distributor_id: uuid.UUID, limit: int
) -> list[DistributorRow]:
    """The level-2 members: distributors who joined through this one's code."""
    rows = await session.execute(
        select(d).where(d.c.upline_id == distributor_id).order_by(d.c.created_at).limit(limit)
    )
    return [DistributorRow(**r._mapping) for r in rows]


async def count_by_status(session: AsyncSession, merchant_id: str, status: str) -> int:
    found = await session.scalar(
        select(func.count()).where(d.c.merchant_id == merchant_id, d.c.status == status)
    )
    return int(found or 0)


@dataclass(frozen=True, slots=True)
class OverrideRow:
    merchant_id: str
    target_type: str
    target_id: str
    level1_bps: int
    level2_bps: int
    leader_bps: int
    updated_by: str
    created_at: datetime
    updated_at: datetime


_o = commission_override


async def put_override(session: AsyncSession, values: Mapping[str, Any]) -> OverrideRow:
    stmt = insert(_o).values(**values)
    keys = ("merchant_id", "target_type", "target_id")
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[_o.c[k] for k in keys],
                set_={
                    **{k: v for k, v in values.items() if k not in keys},
                    "updated_at": func.now(),
                },
            ).returning(_o)
        )
    ).one()
    return OverrideRow(**row._mapping)


async def get_override(
    session: AsyncSession, merchant_id: str, target_type: str, target_id: str
) -> OverrideRow | None:
    row = (
        await session.execute(
            select(_o).where(
                _o.c.merchant_id == merchant_id,
                _o.c.target_type == target_type,
                _o.c.target_id == target_id,
            )
        )
    ).first()
    return None if row is None else OverrideRow(**row._mapping)


async def delete_override(
    session: AsyncSession, merchant_id: str, target_type: str, target_id: str
) -> bool:
    result = await session.execute(
        _o.delete()
        .where(
            _o.c.merchant_id == merchant_id,
            _o.c.target_type == target_type,
            _o.c.target_id == target_id,
        )
        .returning(_o.c.target_id)
    )
    return result.first() is not None


async def overrides_for(
    session: AsyncSession, targets: Collection[tuple[str, str, str]]
) -> dict[tuple[str, str, str], OverrideRow]:
    """The overrides of (merchant, target type, target id) triples that have one."""
    rows = await session.execute(
        select(_o).where(
            tuple_(_o.c.merchant_id, _o.c.target_type, _o.c.target_id).in_(list(targets))
        )
    )
    return {(r.merchant_id, r.target_type, r.target_id): OverrideRow(**r._mapping) for r in rows}


async def overrides(session: AsyncSession, merchant_id: str) -> list[OverrideRow]:
    rows = await session.execute(
        select(_o).where(_o.c.merchant_id == merchant_id).order_by(_o.c.target_type, _o.c.target_id)
    )
    return [OverrideRow(**r._mapping) for r in rows]
