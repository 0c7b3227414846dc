"""What happens to every member of a group at once: its deadline (failure, or virtual
completion), and the groups still open when their campaign closes or is cancelled.

Each runs in one transaction under the campaign's lock (the ``group.expire`` job's, or the
close's): a worker that dies half-way commits nothing and the job runs again. Refunds are
decided here (``refund_everything``: the amount promised on the order, an ``order.refund``
job) and made by that detached job with one provider key per decision, so a paid member of a
failed group is refunded exactly once however often this runs.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.groups import repository as repo
from services.orders.groups.repository import GroupRow
from services.orders.groups.service import PAID, PENDING, now_utc
from services.orders.orders import repository as order_repo
from services.orders.orders.service import Orders
from services.orders.presales import repository as campaigns
from shared.scheduler import Job


async def expire(orders: Orders, session: AsyncSession, job: Job) -> None:
    """The ``group.expire`` job: a group still open at its deadline settles."""
    found = await repo.get_group(session, uuid.UUID(job.key))
    if found is None or found.status != repo.OPEN:
        return  # formed, or settled already: a second run changes nothing
    await campaigns.get_campaign(session, found.campaign_id, lock=True)
    group = await repo.get_group(session, found.id, lock=True)
    assert group is not None
    if group.status != repo.OPEN or group.expires_at > now_utc() + timedelta(seconds=1):
        return
    await _settle(orders, session, group)


async def settle_open_groups(orders: Orders, session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """The campaign closes or is cancelled (the caller holds its lock): no group outlives it."""
    for group in await repo.open_groups(session, campaign_id):
        await _settle(orders, session, group)


async def _settle(orders: Orders, session: AsyncSession, group: GroupRow) -> None:
    """Short of N: unpaid members' orders end (their places with them); then the group
    completes virtually with its paid members when it may, or fails and every paid member's
    order ends and is refunded in full."""
    for member in await repo.members(session, group.id, (PENDING,)):
        order = await order_repo.get_order(session, member.order_id, lock=True)
        assert order is not None
        await orders.cancel_order(session, order, reason="group_expired")
    left = await repo.get_group(session, group.id)
    assert left is not None
    if left.virtual_completion and left.paid_members > 0:
        await repo.update_group(
            session, group.id, {"status": "virtually_formed", "settled_at": now_utc()}
        )
        return
    await repo.update_group(session, group.id, {"status": "failed", "settled_at": now_utc()})
    for member in await repo.members(session, group.id, (PAID,)):
        order = await order_repo.get_order(session, member.order_id, lock=True)
        assert order is not None
        ended = await orders.cancel_order(session, order, reason="group_failed")
        await orders.refund_everything(
            session, ended, reason="the group did not fill in time", kind="group_failed"
        )
