"""SQL of the creators' updates."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import HOLDING, pledge, project_update

u = project_update


@dataclass(frozen=True, slots=True)
class UpdateRow:
    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    body: str
    visibility: str
    posted_by: str
    created_at: datetime
    updated_at: datetime


async def insert_update(session: AsyncSession, values: Mapping[str, Any]) -> UpdateRow:
    row = (await session.execute(u.insert().values(**values).returning(u))).one()
    return UpdateRow(**row._mapping)


def updates_query(project_id: uuid.UUID, *, backers_too: bool) -> Select[Any]:
    stmt = select(u).where(u.c.project_id == project_id)
    return stmt if backers_too else stmt.where(u.c.visibility == "public")


def update_columns() -> Any:
    return u.c


async def is_backer(session: AsyncSession, project_id: uuid.UUID, customer_id: str) -> bool:
    """Whether ``customer_id`` backs the project now (a live or collected pledge)."""
    found = await session.scalar(
        select(
            exists().where(
                pledge.c.project_id == project_id,
                pledge.c.customer_id == customer_id,
                pledge.c.status.in_(HOLDING),
            )
        )
    )
    return bool(found)
