"""What a project's staff read: progress by day and by channel, and the backers to ship to
(CSV, safe to open in a spreadsheet)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.pledges import repository as repo
from services.crowdfund.pledges.schemas import (
    ChannelPoint,
    DailyPoint,
    ProjectStats,
    StatusCount,
)
from services.crowdfund.projects import repository as projects
from services.crowdfund.projects.service import staff_project
from shared.auth import Principal
from shared.csv_export import csv_text
from shared.timezones import check_timezone

BACKER_COLUMNS = (
    "pledge_id",
    "created_at",
    "customer_id",
    "status",
    "reward",
    "quantity",
    "add_ons",
    "amount",
    "currency",
    "region",
    "shipping_fee",
    "delivery_month",
    "referral_code",
    "source",
    "paid",
    "refunded",
)


async def project_stats(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, tz: str
) -> ProjectStats:
    project = await staff_project(session, principal, project_id)
    collected, refunded, fees = await repo.money_totals(session, project_id)
    backers = (
        project.final_backers
        if project.final_backers is not None
        else await projects.counted_backers(session, project_id)
    )
    return ProjectStats(
        project_id=project.id,
        currency=project.currency,
        status=project.status,
        goal=project.goal,
        internal_target=project.internal_target,
        pledged_amount=project.pledged_amount,
        final_amount=project.final_amount,
        backers=backers,
        collected=collected,
        refunded=refunded,
        payment_fees=fees,
        by_status={
            status: StatusCount(pledges=n, amount=amount)
            for status, (n, amount) in (await repo.status_totals(session, project_id)).items()
        },
        timezone=tz,
        daily=[DailyPoint(**x) for x in await repo.daily(session, project_id, check_timezone(tz))],
        channels=[ChannelPoint(**x) for x in await repo.channels(session, project_id)],
    )


async def backers_csv(session: AsyncSession, principal: Principal, project_id: uuid.UUID) -> str:
    """One row per pledge that stands (or was paid): its reward, add-ons and shipping."""
    await staff_project(session, principal, project_id)
    rewards = {x.id: x for x in await projects.get_rewards(session, project_id)}
    pledges = await repo.backers(session, project_id)
    items = await repo.get_items(session, [x.id for x in pledges])
    rows: list[tuple[Any, ...]] = [BACKER_COLUMNS]
    for pledge in pledges:
        mine = [i for i in items if i.pledge_id == pledge.id]
        tier = next((i for i in mine if i.reward_id == pledge.reward_id), None)
        add_ons = "; ".join(
            f"{rewards[i.reward_id].title} x{i.quantity}" for i in mine if i is not tier
        )
        months = [rewards[i.reward_id].delivery_month for i in mine]
        rows.append(
            (
                pledge.id,
                pledge.created_at,
                pledge.customer_id,
                pledge.status,
                rewards[tier.reward_id].title if tier else "(support without reward)",
                tier.quantity if tier else 0,
                add_ons,
                pledge.amount,
                pledge.currency,
                pledge.region,
                pledge.shipping_fee,
                max((m for m in months if m), default=None),
                pledge.referral_code,
                pledge.source,
                pledge.paid,
                pledge.refunded_amount,
            )
        )
    return csv_text(rows)
