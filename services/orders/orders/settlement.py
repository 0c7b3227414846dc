"""What happens to every order of a campaign at once: the close, the end of the balance
window, and a staff cancellation.

Each runs in one transaction under the campaign's lock (the scheduled job's own, for the
close and the window's end): a worker that dies half-way commits nothing, and the job's
lease lets another worker start it again from the beginning. The provider is never called
in here: refunds are decided (the amount promised on the order, a refund job scheduled) and
carried out afterwards by the detached refund job, with one provider idempotency key per
decision, so neither a second run nor a second worker refunds twice.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.groups import settlement as groups
from services.orders.models import PAID, PENDING
from services.orders.orders import repository as repo
from services.orders.orders.repository import OrderRow
from services.orders.orders.service import Orders, now_utc
from services.orders.presales import repository as campaigns
from services.orders.presales.pricing import (
    FORFEITED_ON_UNPAID_BALANCE,
    balance_due,
    prepayment_excess,
    tier_for,
    unit_price_for_order,
)
from services.orders.presales.repository import CampaignRow
from services.orders.presales.service import (
    CLOSE_JOB,
    OPEN_JOB,
    CampaignStateConflict,
    staff_campaign,
)
from shared.auth import Principal
from shared.events.contracts import OrderBalanceDue
from shared.scheduler import Job, cancel, schedule

BALANCE_DEADLINE_JOB = "presale.balance_deadline"
HELD = ("deposit_paid", "paid")
CANCELLABLE = ("draft", "published", "open", "succeeded")


async def close(orders: Orders, session: AsyncSession, job: Job) -> None:
    """The scheduled close: minimum reached, balances become due; missed, all is refunded."""
    campaign = await campaigns.get_campaign(session, uuid.UUID(job.key), lock=True)
    if campaign is None or campaign.status not in ("published", "open"):
        return  # closed (or cancelled) already: a second run changes nothing
    now = now_utc()
    if campaign.closes_at > now + timedelta(seconds=1):
        return  # the close moved later: the rescheduled job runs then
    await groups.settle_open_groups(orders, session, campaign.id)
    for unpaid in await repo.campaign_orders(session, campaign.id, ("pending_payment",)):
        await orders.cancel_order(session, unpaid, reason="expired")
    campaign = await campaigns.get_campaign(session, campaign.id, lock=True)
    assert campaign is not None
    if campaign.committed_quantity >= campaign.min_quantity:
        await _succeed(orders, session, campaign)
    else:
        await campaigns.update_campaign(
            session, campaign.id, {"status": "failed", "closed_at": now}
        )
        for held in await repo.campaign_orders(session, campaign.id, HELD):
            ended = await orders.cancel_order(session, held, reason="campaign_failed")
            await orders.refund_everything(
                session, ended, reason="the campaign missed its minimum", kind="campaign_failed"
            )


async def _succeed(orders: Orders, session: AsyncSession, campaign: CampaignRow) -> None:
    now = now_utc()
    final = tier_for(campaign.tiers, campaign.committed_quantity).unit_price
    due_by = now + timedelta(hours=campaign.balance_window_hours)
    any_balance = False
    for order in await repo.campaign_orders(session, campaign.id, HELD):
        unit = unit_price_for_order(
            final, order.early_bird_price, order.group_unit_price, order.member_unit_price
        )
        if order.deposit_type == "full":
            excess = prepayment_excess(
                quantity=order.quantity, unit_price=unit, paid=order.first_paid
            )
            priced = await repo.update_order(session, order.id, {"final_unit_price": unit})
            if excess > 0:
                await orders.decide_refund(
                    session,
                    priced,
                    amount=excess,
                    reason=f"the final price is {unit} per unit",
                    kind="price_difference",
                    by="system",
                )
            continue
        balance = balance_due(
            quantity=order.quantity, unit_price=unit, deposit_credit=order.deposit_credit
        )
        if balance == 0:
            await repo.update_order(
                session, order.id, {"final_unit_price": unit, "balance_amount": 0, "status": "paid"}
            )
            continue
        any_balance = True
        due = await repo.update_order(
            session,
            order.id,
            {
                "final_unit_price": unit,
                "balance_amount": balance,
                "balance_due_by": due_by,
                "status": "balance_due",
            },
        )
        await orders.publish(
            session,
            OrderBalanceDue,
            due,
            final_unit_price=unit,
            balance_amount=balance,
            due_by=due_by,
        )
    await campaigns.update_campaign(
        session,
        campaign.id,
        {
            "status": "succeeded",
            "final_unit_price": final,
            "closed_at": now,
            "balance_due_by": due_by if any_balance else None,
        },
    )
    if any_balance:
        await schedule(
            session, orders.platform, kind=BALANCE_DEADLINE_JOB, key=str(campaign.id), run_at=due_by
        )


async def balance_deadline(orders: Orders, session: AsyncSession, job: Job) -> None:
    """The balance window ended: unpaid orders are cancelled; a 定金 is kept, a 订金 refunded."""
    campaign = await campaigns.get_campaign(session, uuid.UUID(job.key), lock=True)
    if campaign is None or campaign.status != "succeeded":
        return
    now = now_utc()
    for order in await repo.campaign_orders(session, campaign.id, ("balance_due",)):
        if order.balance_due_by is not None and order.balance_due_by > now:
            continue
        await _balance_unpaid(orders, session, order)


async def _balance_unpaid(orders: Orders, session: AsyncSession, order: OrderRow) -> None:
    if order.deposit_type in FORFEITED_ON_UNPAID_BALANCE:
        kept = await repo.update_order(
            session, order.id, {"forfeited_amount": order.first_paid - order.first_refund_promised}
        )
        await orders.cancel_order(session, kept, reason="balance_unpaid")
        return
    ended = await orders.cancel_order(session, order, reason="balance_unpaid")
    await orders.refund_everything(
        session, ended, reason="订金 refunded: the balance was not paid", kind="balance_unpaid"
    )


async def cancel_campaign(
    orders: Orders, session: AsyncSession, principal: Principal, campaign_id: uuid.UUID
) -> None:
    """Staff stop a campaign: every order ends and everything paid goes back, whatever the
    deposit type (a 定金 included: the merchant, not the buyer, broke the deal)."""
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status not in CANCELLABLE:
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot be cancelled")
    for held in await repo.campaign_orders(session, campaign.id, (PENDING, *PAID)):
        ended = await orders.cancel_order(session, held, reason="campaign_cancelled")
        await orders.refund_everything(
            session, ended, reason="the merchant cancelled the campaign", kind="campaign_cancelled"
        )
    await groups.settle_open_groups(orders, session, campaign.id)
    await campaigns.update_campaign(
        session, campaign.id, {"status": "cancelled", "closed_at": campaign.closed_at or now_utc()}
    )
    for kind in (OPEN_JOB, CLOSE_JOB, BALANCE_DEADLINE_JOB):
        await cancel(session, orders.platform, kind=kind, key=str(campaign.id))


async def mark_fulfilled(
    orders: Orders, session: AsyncSession, principal: Principal, campaign_id: uuid.UUID
) -> None:
    """Staff close the books on a succeeded campaign once nothing is left to ship: no balance
    still due and every paid order shipped (or delivered, or complete)."""
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status != "succeeded":
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot be fulfilled")
    waiting = await repo.campaign_orders(session, campaign.id, ("balance_due", "paid"))
    if waiting:
        raise CampaignStateConflict(
            f"{len(waiting)} orders still await their balance or shipping", waiting=len(waiting)
        )
    await campaigns.update_campaign(session, campaign.id, {"status": "fulfilled"})
