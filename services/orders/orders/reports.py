"""What staff read about a campaign: its statistics, the factory's demand per variant, and
the orders as CSV (shared/csv_export.py keeps formulas out of the cells)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.orders.orders import repository as repo
from services.orders.orders.repository import OrderRow
from services.orders.orders.schemas import CampaignStats, DailyPoint
from services.orders.presales import repository as campaigns
from services.orders.presales.service import CampaignStateConflict, staff_campaign
from shared.auth import Principal
from shared.csv_export import csv_text
from shared.timezones import check_timezone

EXPORT_COLUMNS = (
    "id",
    "created_at",
    "campaign_id",
    "customer_id",
    "sku",
    "quantity",
    "currency",
    "status",
    "cancel_reason",
    "deposit_type",
    "final_unit_price",
    "paid_total",
    "refunded_total",
    "forfeited_amount",
    "balance_amount",
    "balance_due_by",
    "referral_code",
    "carrier",
    "tracking_number",
    "shipped_at",
    "delivered_at",
    "completed_at",
)
_BATCH = 500


async def campaign_stats(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, tz: str
) -> CampaignStats:
    campaign = await staff_campaign(session, principal, campaign_id)
    totals = await repo.campaign_totals(session, campaign_id)
    daily = await repo.campaign_daily(session, campaign_id, check_timezone(tz))
    paid = totals["deposits_paid"] + totals["prepayments_paid"] + totals["balances_paid"]
    placed = totals["orders_placed"]
    return CampaignStats(
        campaign_id=campaign.id,
        currency=campaign.currency,
        status=campaign.status,
        units_committed=campaign.committed_quantity,
        conversion_bps=0 if placed == 0 else totals["orders_paid"] * 10_000 // placed,
        gmv=paid - totals["refunded"],
        timezone=tz,
        daily=[DailyPoint(**point) for point in daily],
        **{
            k: totals[k]
            for k in (
                "buyers",
                "orders_placed",
                "orders_paid",
                "orders_cancelled",
                "deposits_paid",
                "prepayments_paid",
                "balances_paid",
                "refunded",
                "forfeited",
            )
        },
    )


async def demand_csv(session: AsyncSession, principal: Principal, campaign_id: uuid.UUID) -> str:
    """Units to make per variant, once the close has fixed them (the factory's order)."""
    campaign = await staff_campaign(session, principal, campaign_id)
    if campaign.status not in ("succeeded", "fulfilled"):
        raise CampaignStateConflict("the demand is known once the campaign has succeeded")
    demand = {d["sku"]: d for d in await repo.demand_by_variant(session, campaign_id)}
    rows: list[Sequence[Any]] = [
        ("sku", "name", "units_paid", "units_awaiting_balance", "orders", "final_unit_price")
    ]
    for variant in await campaigns.get_variants(session, campaign_id):
        d = demand.get(variant.sku, {})
        rows.append(
            (
                variant.sku,
                variant.name,
                d.get("units_paid", 0),
                d.get("units_awaiting_balance", 0),
                d.get("orders", 0),
                campaign.final_unit_price,
            )
        )
    return csv_text(rows)


def _export_row(order: OrderRow) -> tuple[Any, ...]:
    values = {
        "paid_total": order.paid_total,
        "refunded_total": order.refunded_amount,
    }
    return tuple(values[c] if c in values else getattr(order, c) for c in EXPORT_COLUMNS)


async def export_csv(
    sessionmaker: async_sessionmaker[AsyncSession], stmt: Select[Any]
) -> AsyncIterator[bytes]:
    """The orders of ``stmt`` as CSV, streamed from a server-side cursor in batches (memory
    stays flat however many orders match)."""
    yield csv_text([EXPORT_COLUMNS]).encode()
    async with sessionmaker() as session, session.begin():
        result = await session.stream(stmt.execution_options(yield_per=_BATCH))
        async for batch in result.partitions(_BATCH):
            yield csv_text(_export_row(OrderRow(**r._mapping)) for r in batch).encode()
