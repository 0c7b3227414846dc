"""The creator's settlement: after the fix window, one statement per project,

    collected - refunds - platform fee - payment fees = payout

exact to the fen, and its payout record (paid outside, by bank transfer, and marked paid by a
platform admin with the transfer's reference; the payment layer has no Stripe Connect
transfers yet). Refunds made after a statement are deducted by the creator's next one.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.models import CHARGEABLE
from services.crowdfund.pledges import repository as pledges_repo
from services.crowdfund.pledges.service import now_utc
from services.crowdfund.projects import repository as projects
from services.crowdfund.settlements import repository as repo
from services.crowdfund.settlements.repository import SettlementRow
from shared.auth import Principal
from shared.errors import Conflict, NotFound
from shared.scheduler import Job, schedule
from shared.tables import PlatformTables

SETTLE_JOB = "project.settle"
# After the deadline: the fix windows its charges open (7 days), and a margin.
SETTLE_AFTER = timedelta(days=7, hours=1)
BPS = 10_000


class SettlementNotFound(NotFound):
    code = "settlement_not_found"
    title = "No settlement (yet) for this"


class SettlementStateConflict(Conflict):
    code = "settlement_state_conflict"
    title = "Only a pending settlement can be marked paid"


def platform_fee(base: int, bps: int) -> int:
    """The platform's fee on what the creator keeps: rounded down to the fen (in the
    creator's favour), never below zero."""
    return max(0, base) * bps // BPS


async def settle(session: AsyncSession, tables: PlatformTables, job: Job) -> None:
    """The scheduled settlement of a project that succeeded (a second run changes nothing).
    A pledge still in its fix window puts it off until the window ends."""
    project_id = job.key.split("@")[0]
    project = await projects.get_project(session, uuid.UUID(project_id), lock=True)
    if project is None or project.status != "succeeded":
        return
    still_open = await pledges_repo.project_pledges(session, project.id, CHARGEABLE)
    if still_open:
        # A job cannot move itself (it is marked done when it returns): a later one, keyed
        # by its time, takes over.
        ends = [p.fix_until or p.charge_locked_until or now_utc() for p in still_open]
        later = max(ends) + timedelta(hours=1)
        key = f"{project_id}@{later.isoformat()}"
        await schedule(session, tables, kind=SETTLE_JOB, key=key, run_at=later)
        return
    settlement_id = uuid.uuid4()
    collected, _, payment_fees = await pledges_repo.money_totals(session, project.id)
    refunds = await pledges_repo.take_unsettled_refunds(
        session, project.merchant_id, project.currency, settlement_id
    )
    bps = project.platform_fee_bps or 0
    fee = platform_fee(collected - refunds, bps)
    payout = collected - refunds - fee - payment_fees
    counts = await pledges_repo.status_totals(session, project.id)
    await repo.insert_settlement(
        session,
        {
            "id": settlement_id,
            "project_id": project.id,
            "merchant_id": project.merchant_id,
            "currency": project.currency,
            "collected": collected,
            "refunds": refunds,
            "platform_fee_bps": bps,
            "platform_fee": fee,
            "payment_fees": payment_fees,
            "payout": payout,
            "pledges_collected": counts.get("collected", (0, 0))[0],
            "pledges_dropped": counts.get("dropped", (0, 0))[0],
            "status": "owed" if payout < 0 else "pending",
        },
    )
    await projects.update_project(session, project.id, {"status": "settled"})


async def project_settlement(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID
) -> SettlementRow:
    found = await repo.project_settlement(session, project_id)
    if found is None or not principal.acts_for(found.merchant_id):
        raise SettlementNotFound()
    return found


async def mark_paid(
    session: AsyncSession, principal: Principal, settlement_id: uuid.UUID, reference: str
) -> SettlementRow:
    """A platform admin records the payout made outside (bank transfer), with its reference."""
    found = await repo.get_settlement(session, settlement_id, lock=True)
    if found is None:
        raise SettlementNotFound()
    if found.status != "pending":
        raise SettlementStateConflict(f"this settlement is {found.status}")
    return await repo.update_settlement(
        session,
        settlement_id,
        {
            "status": "paid",
            "external_reference": reference,
            "paid_by": principal.sub,
            "paid_at": now_utc(),
        },
    )
