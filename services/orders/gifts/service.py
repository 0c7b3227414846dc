"""The rules of gifts (送人): the buyer orders a gift with a message; once paid, its claim
link (an unguessable token) goes to the recipient, who claims it, logged in, with their own
address; unclaimed in time, it is redirected to the buyer's address or refunded, as the
merchant's terms said when it was ordered.

The buyer follows the gift (claimed, shipped, delivered) but never sees who claimed it or
where it ships. Claims are one conditional UPDATE under the order's lock, so two claimers at
once get one gift; the unclaimed deadline is a job per gift (``gift.unclaimed``) that runs
under the campaign's and the order's locks, once, on whichever worker claims it. Lock
order, as everywhere: campaign, order, gift.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.gifts import repository as repo
from services.orders.gifts.repository import GiftRow
from services.orders.gifts.schemas import GiftOut, GiftPolicyIn, GiftPolicyOut, GiftPreview
from services.orders.orders import repository as orders_repo
from services.orders.orders.repository import OrderRow
from services.orders.orders.schemas import DeliveryAddress, GiftIn
from services.orders.presales import repository as campaigns
from services.orders.presales.service import now_utc
from shared.auth import Principal
from shared.errors import Conflict, Forbidden, NotFound
from shared.scheduler import Job, schedule
from shared.tables import PlatformTables

if TYPE_CHECKING:
    from services.orders.orders.service import Orders

UNCLAIMED_JOB = "gift.unclaimed"
DEFAULT_CLAIM_DAYS = 7
DEFAULT_ON_UNCLAIMED = "refund"
# The order states in which a gift can be claimed (or fall due): paid, not shipped yet.
CLAIMABLE = ("deposit_paid", "balance_due", "paid")


class GiftNotFound(NotFound):
    code = "gift_not_found"
    title = "No such gift"


class GiftAlreadyClaimed(Conflict):
    code = "gift_already_claimed"
    title = "This gift has been claimed already"


class GiftClaimByBuyer(Forbidden):
    code = "gift_claim_by_buyer"
    title = "A gift is claimed by its recipient, not by its buyer"


class GiftNotClaimable(Conflict):
    code = "gift_not_claimable"
    title = "This gift cannot be claimed: unpaid, ended, redirected or refunded"


class GiftAwaitingClaim(Conflict):
    code = "gift_awaiting_claim"
    title = "A gift ships once claimed (or redirected to its buyer)"


async def attach(
    session: AsyncSession, tables: PlatformTables, order: OrderRow, gift: GiftIn
) -> None:
    """Makes a new order a gift, on the merchant's gift terms of today: claimable (once paid)
    for its claim days from now, then redirected or refunded by its job."""
    policy = await repo.get_policy(session, order.merchant_id)
    claim_days = DEFAULT_CLAIM_DAYS if policy is None else policy.claim_days
    claim_by = order.created_at + timedelta(days=claim_days)
    await repo.insert_gift(
        session,
        {
            "order_id": order.id,
            "message": gift.message,
            "token": secrets.token_urlsafe(32),
            "on_unclaimed": DEFAULT_ON_UNCLAIMED if policy is None else policy.on_unclaimed,
            "claim_by": claim_by,
        },
    )
    await schedule(session, tables, kind=UNCLAIMED_JOB, key=str(order.id), run_at=claim_by)


async def ensure_shippable(session: AsyncSession, order: OrderRow) -> None:
    """A gift has no address to ship to until it is claimed or redirected."""
    gift = await repo.get_gift(session, order.id)
    if gift is not None and gift.status == "awaiting_claim":
        raise GiftAwaitingClaim()


async def claim(
    session: AsyncSession, principal: Principal, token: str, address: DeliveryAddress
) -> tuple[GiftRow, OrderRow]:
    found = await repo.gift_by_token(session, token)
    if found is None:
        raise GiftNotFound()
    # The order's lock: its state cannot change (refunded, cancelled) while it is claimed.
    order = await orders_repo.get_order(session, found.order_id, lock=True)
    assert order is not None
    claimed = await repo.claim(session, token, principal.sub, address.model_dump(), CLAIMABLE)
    if claimed is not None:
        return claimed, order
    gift = await repo.get_gift(session, found.order_id)
    assert gift is not None
    if gift.status == "claimed":
        raise GiftAlreadyClaimed()
    if order.customer_id == principal.sub:
        raise GiftClaimByBuyer()
    raise GiftNotClaimable(f"the gift is {gift.status}, its order {order.status}")


async def preview(session: AsyncSession, token: str) -> GiftPreview:
    gift = await repo.gift_by_token(session, token)
    if gift is None:
        raise GiftNotFound()
    order = await orders_repo.get_order(session, gift.order_id)
    assert order is not None
    campaign = await campaigns.get_campaign(session, order.campaign_id)
    assert campaign is not None
    return GiftPreview(
        message=gift.message,
        campaign_id=campaign.id,
        title=campaign.title,
        sku=order.sku,
        quantity=order.quantity,
        status=gift.status,
        claimable=gift.status == "awaiting_claim" and order.status in CLAIMABLE,
        claim_by=gift.claim_by,
    )


async def visible_gift(
    session: AsyncSession, principal: Principal, order_id: uuid.UUID
) -> tuple[GiftRow, OrderRow]:
    """The gift for its buyer, its recipient, staff of its merchant and admins."""
    gift = await repo.get_gift(session, order_id)
    order = None if gift is None else await orders_repo.get_order(session, order_id)
    if (
        gift is None
        or order is None
        or not (
            principal.sub in (order.customer_id, gift.recipient_id)
            or principal.acts_for(order.merchant_id)
        )
    ):
        raise GiftNotFound()
    return gift, order


def gift_out(gift: GiftRow, order: OrderRow, principal: Principal, claim_base_url: str) -> GiftOut:
    staff = principal.acts_for(order.merchant_id)
    recipient = gift.recipient_id == principal.sub
    buyer = order.customer_id == principal.sub
    ship_to = None
    if gift.status == "claimed" and (staff or recipient):
        ship_to = gift.recipient_address
    elif gift.status == "redirected":
        ship_to = order.delivery_address
    link = buyer and gift.status == "awaiting_claim" and order.status in CLAIMABLE
    return GiftOut(
        order_id=order.id,
        message=gift.message,
        status=gift.status,
        claimed=gift.status == "claimed",
        on_unclaimed=gift.on_unclaimed,
        claim_by=gift.claim_by,
        claimed_at=gift.claimed_at,
        order_status=order.status,
        shipped_at=order.shipped_at,
        delivered_at=order.delivered_at,
        claim_url=str(httpx.URL(claim_base_url).copy_merge_params({"token": gift.token}))
        if link
        else None,
        carrier=order.carrier,
        tracking_number=order.tracking_number,
        ship_to=None if ship_to is None else DeliveryAddress.model_validate(ship_to),
        recipient_id=gift.recipient_id if staff else None,
    )


async def unclaimed(orders: Orders, session: AsyncSession, job: Job) -> None:
    """The claim window ended: an unclaimed gift of a paid order is redirected to its buyer's
    address (refunded when they gave none) or refunded, as its terms say. Run twice, or on
    two workers, it acts once: the second finds the gift no longer awaiting its claim."""
    order_id = uuid.UUID(job.key)
    found = await orders_repo.get_order(session, order_id)
    if found is None:
        return
    await campaigns.get_campaign(session, found.campaign_id, lock=True)
    order = await orders_repo.get_order(session, order_id, lock=True)
    gift = await repo.get_gift(session, order_id, lock=True)
    if order is None or gift is None or gift.status != "awaiting_claim":
        return
    if order.status not in CLAIMABLE:
        return  # ended meanwhile (expired, refunded, campaign failed): nothing to resolve
    if gift.on_unclaimed == "redirect" and order.delivery_address is not None:
        await repo.update_gift(
            session, order_id, {"status": "redirected", "resolved_at": now_utc()}
        )
        return
    await repo.update_gift(session, order_id, {"status": "refunded", "resolved_at": now_utc()})
    ended = await orders.cancel_order(session, order, reason="gift_unclaimed")
    await orders.refund_everything(
        session, ended, reason="the gift was not claimed in time", kind="gift_unclaimed"
    )


# --- the merchant's terms -------------------------------------------------------------------


async def get_policy(session: AsyncSession, merchant_id: str) -> GiftPolicyOut:
    row = await repo.get_policy(session, merchant_id)
    if row is None:
        return GiftPolicyOut(
            merchant_id=merchant_id,
            claim_days=DEFAULT_CLAIM_DAYS,
            on_unclaimed=DEFAULT_ON_UNCLAIMED,
            updated_at=None,
        )
    return GiftPolicyOut(
        merchant_id=merchant_id,
        claim_days=row.claim_days,
        on_unclaimed=row.on_unclaimed,
        updated_at=row.updated_at,
    )


async def put_policy(
    session: AsyncSession, principal: Principal, merchant_id: str, body: GiftPolicyIn
) -> GiftPolicyOut:
    await repo.put_policy(session, merchant_id, {**body.model_dump(), "updated_by": principal.sub})
    return await get_policy(session, merchant_id)
