"""SQL of projects, their rewards (tiers and add-ons) and stretch goals, and the counters that
places and the goal are held by."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import (
    COUNTED,
    pledge,
    pledge_item,
    project,
    reward,
    stretch_goal,
)

p = project
r = reward
g = stretch_goal


@dataclass(frozen=True, slots=True)
class ProjectRow:
    id: uuid.UUID
    merchant_id: str
    title: str
    story: str
    image_urls: list[str]
    video_urls: list[str]
    category: str
    currency: str
    goal: int
    internal_target: int | None
    launch_at: datetime
    deadline_at: datetime
    funding_model: str
    support_minimum: int | None
    risks: str
    delivery_promise: str
    no_refund_last_hour: bool
    platform_fee_bps: int | None
    status: str
    suspended: bool
    review_reason: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    pledged_amount: int
    final_amount: int | None
    final_backers: int | None
    decided_at: datetime | None
    cancelled_at: datetime | None
    payout_account: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RewardRow:
    id: uuid.UUID
    project_id: uuid.UUID
    kind: str
    position: int
    title: str
    description: str
    amount: int
    quantity_limit: int | None
    per_backer_limit: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    delivery_month: str | None
    shipping_fees: dict[str, int] | None
    reserved: int
    created_at: datetime
    updated_at: datetime

    @property
    def places_left(self) -> int | None:
        return None if self.quantity_limit is None else self.quantity_limit - self.reserved


@dataclass(frozen=True, slots=True)
class StretchGoalRow:
    id: uuid.UUID
    project_id: uuid.UUID
    threshold: int
    title: str
    unlocks: str
    unlocked_at: datetime | None
    created_at: datetime
    updated_at: datetime


# --- projects ---------------------------------------------------------------------------


async def insert_project(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(p.insert().values(**values))


async def get_project(
    session: AsyncSession, project_id: uuid.UUID, *, lock: bool = False
) -> ProjectRow | None:
    stmt = select(p).where(p.c.id == project_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else ProjectRow(**row._mapping)


async def update_project(
    session: AsyncSession, project_id: uuid.UUID, values: Mapping[str, Any]
) -> ProjectRow:
    row = (
        await session.execute(
            update(p)
            .where(p.c.id == project_id)
            .values(**values, updated_at=func.now())
            .returning(p)
        )
    ).one()
    return ProjectRow(**row._mapping)


def projects_query() -> Select[Any]:
    return select(p)


def project_columns() -> Any:
    return p.c


async def take_for_pledge(
    session: AsyncSession, project_id: uuid.UUID, now: datetime
) -> ProjectRow | None:
    """Locks a project that takes pledges now (live, not suspended, before its deadline).

    The row lock serialises every pledge, change and cancellation of the project until the
    caller's transaction ends: the per-backer checks and the total that follow are exact.
    None: the project does not take pledges (the caller reads why)."""
    row = (
        await session.execute(
            select(p)
            .where(
                p.c.id == project_id,
                p.c.status == "live",
                p.c.suspended.is_(False),
                p.c.launch_at <= now,
                p.c.deadline_at > now,
            )
            .with_for_update()
        )
    ).first()
    return None if row is None else ProjectRow(**row._mapping)


async def add_pledged(session: AsyncSession, project_id: uuid.UUID, amount: int) -> ProjectRow:
    """Moves the confirmed total by ``amount`` (the caller holds the project's lock)."""
    row = (
        await session.execute(
            update(p)
            .where(p.c.id == project_id)
            .values(pledged_amount=p.c.pledged_amount + amount, updated_at=func.now())
            .returning(p)
        )
    ).one()
    return ProjectRow(**row._mapping)


async def backers(session: AsyncSession, project_id: uuid.UUID, statuses: Sequence[str]) -> int:
    """Distinct backers with a pledge in ``statuses``."""
    count = await session.scalar(
        select(func.count(func.distinct(pledge.c.customer_id))).where(
            pledge.c.project_id == project_id, pledge.c.status.in_(statuses)
        )
    )
    return int(count or 0)


async def counted_backers(session: AsyncSession, project_id: uuid.UUID) -> int:
    return await backers(session, project_id, COUNTED)


# --- rewards ----------------------------------------------------------------------------


async def insert_reward(session: AsyncSession, values: Mapping[str, Any]) -> RewardRow:
    row = (await session.execute(r.insert().values(**values).returning(r))).one()
    return RewardRow(**row._mapping)


async def get_reward(
    session: AsyncSession, project_id: uuid.UUID, reward_id: uuid.UUID
) -> RewardRow | None:
    row = (
        await session.execute(select(r).where(r.c.id == reward_id, r.c.project_id == project_id))
    ).first()
    return None if row is None else RewardRow(**row._mapping)


async def get_rewards(session: AsyncSession, project_id: uuid.UUID) -> list[RewardRow]:
    rows = await session.execute(
        select(r).where(r.c.project_id == project_id).order_by(r.c.kind.desc(), r.c.position)
    )
    return [RewardRow(**x._mapping) for x in rows]


async def children_of(
    session: AsyncSession, project_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[list[RewardRow], list[StretchGoalRow]]]:
    """The rewards and stretch goals of several projects, two queries in all."""
    out: dict[uuid.UUID, tuple[list[RewardRow], list[StretchGoalRow]]] = {
        i: ([], []) for i in project_ids
    }
    rewards = await session.execute(
        select(r).where(r.c.project_id.in_(project_ids)).order_by(r.c.kind.desc(), r.c.position)
    )
    for x in rewards:
        out[x.project_id][0].append(RewardRow(**x._mapping))
    goals = await session.execute(
        select(g).where(g.c.project_id.in_(project_ids)).order_by(g.c.threshold)
    )
    for x in goals:
        out[x.project_id][1].append(StretchGoalRow(**x._mapping))
    return out


async def rewards_by_id(
    session: AsyncSession, project_id: uuid.UUID, reward_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RewardRow]:
    rows = await session.execute(
        select(r).where(r.c.project_id == project_id, r.c.id.in_(reward_ids))
    )
    return {x.id: RewardRow(**x._mapping) for x in rows}


async def next_reward_position(session: AsyncSession, project_id: uuid.UUID) -> int:
    top = await session.scalar(
        select(func.coalesce(func.max(r.c.position), -1)).where(r.c.project_id == project_id)
    )
    return int(top if top is not None else -1) + 1


async def update_reward(
    session: AsyncSession, reward_id: uuid.UUID, values: Mapping[str, Any]
) -> RewardRow:
    row = (
        await session.execute(
            update(r)
            .where(r.c.id == reward_id)
            .values(**values, updated_at=func.now())
            .returning(r)
        )
    ).one()
    return RewardRow(**row._mapping)


async def delete_reward(session: AsyncSession, reward_id: uuid.UUID) -> None:
    await session.execute(r.delete().where(r.c.id == reward_id))


async def reward_has_backers(session: AsyncSession, reward_id: uuid.UUID) -> bool:
    """Whether any pledge (live or not) ever held this reward."""
    found = await session.scalar(select(exists().where(pledge_item.c.reward_id == reward_id)))
    return bool(found)


async def reserve_places(session: AsyncSession, reward_id: uuid.UUID, quantity: int) -> bool:
    """Takes ``quantity`` places of a reward in one statement; False when too few are left."""
    result = await session.execute(
        update(r)
        .where(
            r.c.id == reward_id,
            or_(r.c.quantity_limit.is_(None), r.c.reserved + quantity <= r.c.quantity_limit),
        )
        .values(reserved=r.c.reserved + quantity)
        .returning(r.c.id)
    )
    return result.first() is not None


async def release_places(session: AsyncSession, reward_id: uuid.UUID, quantity: int) -> None:
    await session.execute(
        update(r).where(r.c.id == reward_id).values(reserved=r.c.reserved - quantity)
    )


# --- stretch goals ----------------------------------------------------------------------


async def get_stretch_goals(session: AsyncSession, project_id: uuid.UUID) -> list[StretchGoalRow]:
    rows = await session.execute(
        select(g).where(g.c.project_id == project_id).order_by(g.c.threshold)
    )
    return [StretchGoalRow(**x._mapping) for x in rows]


async def insert_stretch_goal(session: AsyncSession, values: Mapping[str, Any]) -> StretchGoalRow:
    row = (await session.execute(g.insert().values(**values).returning(g))).one()
    return StretchGoalRow(**row._mapping)


async def delete_stretch_goal(
    session: AsyncSession, project_id: uuid.UUID, goal_id: uuid.UUID
) -> StretchGoalRow | None:
    row = (
        await session.execute(
            g.delete()
            .where(g.c.id == goal_id, g.c.project_id == project_id, g.c.unlocked_at.is_(None))
            .returning(g)
        )
    ).first()
    return None if row is None else StretchGoalRow(**row._mapping)


async def unlock_stretch_goals(
    session: AsyncSession, project_id: uuid.UUID, total: int
) -> list[StretchGoalRow]:
    """Unlocks the goals ``total`` has passed (once each), lowest threshold first."""
    rows = await session.execute(
        update(g)
        .where(g.c.project_id == project_id, g.c.unlocked_at.is_(None), g.c.threshold <= total)
        .values(unlocked_at=func.now(), updated_at=func.now())
        .returning(g)
    )
    return sorted((StretchGoalRow(**x._mapping) for x in rows), key=lambda x: x.threshold)
