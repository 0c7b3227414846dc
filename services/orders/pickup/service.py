"""The rules of community pickup points (团长自提): leaders apply per merchant and its staff
approve, reject or suspend them; an active leader registers points; customers order to an
active point of the campaign's merchant and get a pickup code; staff and the point's leader
read the pick list, mark a campaign's batch arrived at the point, and hand each order over
against its code.

Orders of a pickup point follow the order states (docs/orders.md): the batch's arrival makes
a paid order ``shipped`` (arrived), the pickup makes it ``delivered`` (its return window
starts, then it completes as any other). Lock order, as everywhere: campaign, point, order.
"""

from __future__ import annotations

import secrets
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.orders import repository as orders_repo
from services.orders.orders.schemas import OrderCreate
from services.orders.pickup import repository as repo
from services.orders.pickup.repository import LeaderRow, PickRow, PointRow
from services.orders.pickup.schemas import (
    LeaderApply,
    PickList,
    PickOrder,
    PickState,
    PickVariant,
    PointCreate,
    PointIn,
)
from services.orders.presales import repository as campaigns
from services.orders.presales.service import CampaignNotFound, CampaignStateConflict, now_utc
from shared.auth import Principal
from shared.errors import Conflict, DomainError, Forbidden, NotFound

if TYPE_CHECKING:
    from services.orders.orders.service import Orders

# No 0/O, 1/I: read aloud and typed by hand. 32^6 codes: about a billion per point.
_CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_CODE_LENGTH = 6
# A decision on a leader: the states it applies to, and the state it leads to.
_DECISIONS = {
    "approve": (("pending", "rejected", "suspended"), "active"),
    "reject": (("pending",), "rejected"),
    "suspend": (("active",), "suspended"),
}


class LeaderNotFound(NotFound):
    code = "pickup_leader_not_found"
    title = "No such pickup leader"


class LeaderExists(Conflict):
    code = "pickup_leader_exists"
    title = "You have applied to lead pickup points of this merchant already"


class LeaderStateConflict(Conflict):
    code = "pickup_leader_state_conflict"
    title = "The leader is not in a state that allows this"


class LeaderRequired(Forbidden):
    code = "pickup_leader_required"
    title = "Only a leader the merchant approved (and has not suspended) runs pickup points"


class PointNotFound(NotFound):
    code = "pickup_point_not_found"
    title = "No such pickup point"


class PointUnknown(DomainError):
    status = 422
    code = "pickup_point_unknown"
    title = "The campaign's merchant has no such pickup point"


class PointInactive(DomainError):
    status = 422
    code = "pickup_point_inactive"
    title = "This pickup point does not take orders now"


class DestinationConflict(DomainError):
    status = 422
    code = "order_destination_conflict"
    title = "An order goes to an address or a pickup point; a gift to its recipient's address"


class PickupCodeInvalid(DomainError):
    status = 422
    code = "pickup_code_invalid"
    title = "No order of this pickup point has this code"


class PickupNotReady(Conflict):
    code = "pickup_not_ready"
    title = "This order has not arrived at the pickup point (or it has ended)"


class PickupAlreadyCollected(Conflict):
    code = "pickup_already_collected"
    title = "This order was picked up already"


def new_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))


def mask(customer_id: str) -> str:
    """ab***yz: enough for a leader to match a face to a list, not to find the account."""
    if len(customer_id) <= 4:
        return customer_id[:1] + "***"
    return f"{customer_id[:2]}***{customer_id[-2:]}"


# --- leaders ----------------------------------------------------------------------------


async def apply(session: AsyncSession, principal: Principal, body: LeaderApply) -> LeaderRow:
    """A customer asks to lead pickup points of a merchant; its staff decide."""
    row = await repo.insert_leader(
        session,
        {
            "id": uuid.uuid4(),
            "merchant_id": body.merchant_id,
            "user_id": principal.sub,
            "status": "pending",
            "real_name": body.real_name,
            "phone": body.phone,
        },
    )
    if row is None:
        raise LeaderExists()
    return row


async def decide(
    session: AsyncSession,
    principal: Principal,
    leader_id: uuid.UUID,
    decision: str,
    note: str | None,
) -> LeaderRow:
    """Staff approve (also a rejected or suspended leader), reject or suspend a leader. A
    suspended leader's points take no orders and the leader cannot act on them."""
    leader = await repo.get_leader(session, leader_id, lock=True)
    if leader is None or not principal.acts_for(leader.merchant_id):
        raise LeaderNotFound()
    allowed, target = _DECISIONS[decision]
    if leader.status not in allowed:
        raise LeaderStateConflict(f"a {leader.status} leader cannot be {target}")
    return await repo.update_leader(
        session,
        leader.id,
        {
            "status": target,
            "decided_by": principal.sub,
            "decided_at": now_utc(),
            "decision_note": note,
        },
    )


# --- points -----------------------------------------------------------------------------


async def register_point(
    session: AsyncSession, principal: Principal, body: PointCreate
) -> PointRow:
    leader = await repo.leader_of(session, body.merchant_id, principal.sub)
    if leader is None or leader.status != "active":
        raise LeaderRequired()
    point_id = uuid.uuid4()
    await repo.insert_point(
        session,
        {
            "id": point_id,
            "merchant_id": body.merchant_id,
            "leader_id": leader.id,
            **body.model_dump(exclude={"merchant_id"}),
        },
    )
    point = await repo.get_point(session, point_id)
    assert point is not None
    return point


def _ensure_operator(principal: Principal, point: PointRow) -> None:
    """Staff of the point's merchant, or its own active leader; anyone else learns nothing
    (404), a suspended leader that they are suspended (403)."""
    if principal.acts_for(point.merchant_id):
        return
    if point.leader_user_id != principal.sub:
        raise PointNotFound()
    if point.leader_status != "active":
        raise LeaderRequired()


async def operated_point(
    session: AsyncSession, principal: Principal, point_id: uuid.UUID, *, lock: bool = False
) -> PointRow:
    point = await repo.get_point(session, point_id, lock=lock)
    if point is None:
        raise PointNotFound()
    _ensure_operator(principal, point)
    return point


async def visible_point(
    session: AsyncSession, principal: Principal | None, point_id: uuid.UUID
) -> PointRow:
    """A point taking orders, for anyone; any other, for those who run it."""
    point = await repo.get_point(session, point_id)
    if point is None or (principal is None and not point.accepting_orders):
        raise PointNotFound()
    if principal is not None and not point.accepting_orders:
        _ensure_operator(principal, point)
    return point


async def update_point(
    session: AsyncSession, principal: Principal, point_id: uuid.UUID, body: PointIn
) -> PointRow:
    await operated_point(session, principal, point_id, lock=True)
    await repo.update_point(session, point_id, body.model_dump())
    point = await repo.get_point(session, point_id)
    assert point is not None
    return point


def merchant_points(principal: Principal | None, merchant_id: str) -> Select[Any]:
    """Staff see all their merchant's points; others those taking orders (and their own)."""
    return repo.merchant_points(
        merchant_id,
        all_of_them=principal is not None and principal.acts_for(merchant_id),
        leader_user_id=None if principal is None else principal.sub,
    )


# --- orders -----------------------------------------------------------------------------


def address_of(body: OrderCreate) -> dict[str, Any] | None:
    """The delivery address as the order stores it."""
    return None if body.delivery_address is None else body.delivery_address.model_dump()


async def destination(session: AsyncSession, merchant_id: str, body: OrderCreate) -> dict[str, Any]:
    """The columns of a new order that say where it goes (the caller holds the campaign's
    lock): the address as given, or an active point of the campaign's merchant with a code
    no other order of the point has (the point's lock makes that exact)."""
    address = address_of(body)
    if body.pickup_point_id is None:
        return {"delivery_address": address}
    if address is not None or body.gift is not None:
        raise DestinationConflict(field="pickup_point_id")
    point = await repo.get_point(session, body.pickup_point_id, lock=True)
    if point is None or point.merchant_id != merchant_id:
        raise PointUnknown(field="pickup_point_id")
    if not point.accepting_orders:
        raise PointInactive(field="pickup_point_id")
    code = new_code()
    while await repo.code_taken(session, point.id, code):
        code = new_code()
    return {
        "pickup_point_id": point.id,
        "pickup_leader_id": point.leader_user_id,
        "pickup_code": code,
    }


def _state(row: PickRow) -> PickState:
    if row.status not in repo.TO_COLLECT:
        return "picked_up"
    return "awaiting_arrival" if row.pickup_arrived_at is None else "ready"


def pick_order(row: PickRow) -> PickOrder:
    return PickOrder(
        order_id=row.order_id,
        campaign_id=row.campaign_id,
        customer=mask(row.customer_id),
        sku=row.sku,
        quantity=row.quantity,
        pickup_code=row.pickup_code,
        state=_state(row),
        arrived_at=row.pickup_arrived_at,
        picked_up_at=row.delivered_at,
    )


async def pick_list(
    session: AsyncSession, point: PointRow, campaign_id: uuid.UUID | None
) -> PickList:
    """What the point still hands over: units per variant, and each order with its code."""
    rows = await repo.to_collect(session, point.id, campaign_id)
    totals: dict[tuple[uuid.UUID, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        total = totals[(row.campaign_id, row.sku)]
        total[0] += row.quantity
        total[1] += 1
    variants = await campaigns.variants_of(session, sorted({c for c, _ in totals}))
    names = {(c, v.sku): v.name for c, vs in variants.items() for v in vs}
    return PickList(
        pickup_point_id=point.id,
        variants=[
            PickVariant(campaign_id=c, sku=sku, name=names[(c, sku)], quantity=q, orders=n)
            for (c, sku), (q, n) in totals.items()
        ],
        orders=[pick_order(row) for row in rows],
    )


async def mark_arrived(session: AsyncSession, point: PointRow, campaign_id: uuid.UUID) -> int:
    """The campaign's batch reached the point: its paid orders there are ready to collect."""
    campaign = await campaigns.get_campaign(session, campaign_id, lock=True)
    if campaign is None or campaign.merchant_id != point.merchant_id:
        raise CampaignNotFound()
    if campaign.status not in ("succeeded", "fulfilled"):
        raise CampaignStateConflict("orders reach their point once their campaign has succeeded")
    return await repo.mark_arrived(session, point.id, campaign_id)


async def pick_up(orders: Orders, session: AsyncSession, point: PointRow, code: str) -> PickRow:
    """The customer showed their code: the point's order with that code is handed over
    (delivered), once. A code of another point is no order of this one."""
    found = await repo.order_by_code(session, point.id, code.upper())
    if found is None:
        raise PickupCodeInvalid(field="code")
    order_id, campaign_id = found
    await campaigns.get_campaign(session, campaign_id, lock=True)
    order = await orders_repo.get_order(session, order_id, lock=True)
    assert order is not None
    if order.status in ("delivered", "completed"):
        raise PickupAlreadyCollected()
    if order.status != "shipped" or order.pickup_arrived_at is None:
        raise PickupNotReady(f"the order is {order.status}")
    await orders.delivered(session, order)
    return await repo.pick_row(session, order.id)
