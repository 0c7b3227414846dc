"""Endpoints of pickup points (团长自提): leaders apply and staff decide; leaders register
points; anyone finds the points taking orders; staff and a point's leader read its pick list,
mark a batch arrived and hand orders over against their codes."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from services.orders.orders.router import OrdersDep
from services.orders.orders.schemas import DecisionIn
from services.orders.pickup import repository as repo
from services.orders.pickup import service
from services.orders.pickup.repository import LeaderRow, PointRow
from services.orders.pickup.schemas import (
    ArrivalIn,
    ArrivalOut,
    LeaderApply,
    LeaderOut,
    LeaderStatus,
    PickList,
    PickOrder,
    PickupIn,
    PointCreate,
    PointIn,
    PointOut,
)
from services.orders.pickup.service import (
    LeaderExists,
    LeaderNotFound,
    LeaderRequired,
    LeaderStateConflict,
    PickupAlreadyCollected,
    PickupCodeInvalid,
    PickupNotReady,
    PointNotFound,
)
from services.orders.presales.service import CampaignNotFound, CampaignStateConflict
from shared.auth import (
    AnyCaller,
    CatalogStaff,
    Customer,
    OptionalUser,
    Principal,
    require_merchant_role,
)
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_owner
from shared.text import SafeStr

router = APIRouter(prefix="/v1/pickup-points", tags=["pickup points"])
# A point's leader (a customer; the service checks it is theirs) or the merchant's staff.
LeaderOrStaff = Annotated[
    Principal, require_merchant_role("owner", "operator", others=("customer",))
]
_AUTH = (Unauthorized, Forbidden)
_OPERATOR = (*_AUTH, PointNotFound, LeaderRequired)


@router.post(
    "/leaders",
    status_code=status.HTTP_201_CREATED,
    response_model=LeaderOut,
    summary="Apply to lead pickup points of a merchant (a customer); its staff decide",
    responses=responses(*_AUTH, LeaderExists),
)
async def apply(principal: Customer, body: LeaderApply, session: SessionDep) -> LeaderOut:
    return LeaderOut.of(await service.apply(session, principal, body))


@router.get(
    "/leaders",
    response_model=Page[LeaderOut],
    summary="Leaders, newest first: staff their merchant's, anyone else their own",
    responses=responses(*_AUTH, InvalidCursor),
)
async def list_leaders(
    principal: AnyCaller,
    session: SessionDep,
    page: PageDep,
    status_is: Annotated[LeaderStatus | None, Query(alias="status")] = None,
) -> Page[LeaderOut]:
    cols = repo.leader_columns()
    stmt = scope_to_owner(
        repo.leaders_query(), principal, merchant_column=cols.merchant_id, owner_column=cols.user_id
    )
    if status_is is not None:
        stmt = stmt.where(cols.status == status_is)
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    return Page(items=[LeaderOut.of(LeaderRow(**r._mapping)) for r in rows], next_cursor=cursor)


@router.post(
    "/leaders/{leader_id}/{decision}",
    response_model=LeaderOut,
    summary="Approve, reject or suspend a leader (staff); approving also reinstates",
    responses=responses(*_AUTH, LeaderNotFound, LeaderStateConflict),
)
async def decide(
    principal: CatalogStaff,
    leader_id: uuid.UUID,
    decision: Annotated[Literal["approve", "reject", "suspend"], Path()],
    body: DecisionIn,
    session: SessionDep,
) -> LeaderOut:
    return LeaderOut.of(await service.decide(session, principal, leader_id, decision, body.note))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PointOut,
    summary="Register a pickup point (an approved leader of the merchant)",
    responses=responses(*_AUTH, LeaderRequired),
)
async def register(principal: Customer, body: PointCreate, session: SessionDep) -> PointOut:
    return PointOut.of(await service.register_point(session, principal, body))


@router.get(
    "",
    response_model=Page[PointOut],
    summary="A merchant's points taking orders (no login); staff see all, leaders also theirs",
    responses=responses(InvalidCursor),
)
async def list_points(
    principal: OptionalUser,
    session: SessionDep,
    page: PageDep,
    merchant_id: Annotated[SafeStr, Query(min_length=1, max_length=100)],
) -> Page[PointOut]:
    cols = repo.point_columns()
    stmt = service.merchant_points(principal, merchant_id)
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    return Page(items=[PointOut.of(PointRow(**r._mapping)) for r in rows], next_cursor=cursor)


@router.get(
    "/{point_id}",
    response_model=PointOut,
    summary="A point taking orders (no login); staff and its leader see it whatever its state",
    responses=responses(*_OPERATOR),
)
async def get(principal: OptionalUser, point_id: uuid.UUID, session: SessionDep) -> PointOut:
    return PointOut.of(await service.visible_point(session, principal, point_id))


@router.put(
    "/{point_id}",
    response_model=PointOut,
    summary="Change a point, or take it out of service (its leader, or staff)",
    responses=responses(*_OPERATOR),
)
async def update(
    principal: LeaderOrStaff, point_id: uuid.UUID, body: PointIn, session: SessionDep
) -> PointOut:
    return PointOut.of(await service.update_point(session, principal, point_id, body))


@router.get(
    "/{point_id}/pick-list",
    response_model=PickList,
    summary="What the point still hands over: units per variant, orders with their codes",
    responses=responses(*_OPERATOR),
)
async def pick_list(
    principal: AnyCaller,
    point_id: uuid.UUID,
    session: SessionDep,
    campaign_id: uuid.UUID | None = None,
) -> PickList:
    point = await service.operated_point(session, principal, point_id)
    return await service.pick_list(session, point, campaign_id)


@router.post(
    "/{point_id}/arrivals",
    response_model=ArrivalOut,
    summary="A campaign's batch reached the point: its paid orders there are ready to collect",
    responses=responses(*_OPERATOR, CampaignNotFound, CampaignStateConflict),
)
async def arrived(
    principal: LeaderOrStaff, point_id: uuid.UUID, body: ArrivalIn, session: SessionDep
) -> ArrivalOut:
    point = await service.operated_point(session, principal, point_id)
    count = await service.mark_arrived(session, point, body.campaign_id)
    return ArrivalOut(pickup_point_id=point.id, campaign_id=body.campaign_id, arrived=count)


@router.post(
    "/{point_id}/pickups",
    response_model=PickOrder,
    summary="Hand an order over against the code its customer shows (delivered)",
    responses=responses(*_OPERATOR, PickupCodeInvalid, PickupNotReady, PickupAlreadyCollected),
)
async def pick_up(
    principal: LeaderOrStaff,
    point_id: uuid.UUID,
    body: PickupIn,
    session: SessionDep,
    orders: OrdersDep,
) -> PickOrder:
    point = await service.operated_point(session, principal, point_id)
    return service.pick_order(await service.pick_up(orders, session, point, body.code))
