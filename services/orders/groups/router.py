"""Endpoints of group buys (拼团): staff set a campaign's offer; customers open and join groups
by ordering into them; anyone holding a code reads its group, and anyone the open groups of
a campaign."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from services.orders.groups import repository as repo
from services.orders.groups import service
from services.orders.groups.schemas import GroupOrderIn, GroupOrderOut, GroupOut, OfferIn, OfferOut
from services.orders.groups.service import (
    GroupAlreadyMember,
    GroupBuyNotEnabled,
    GroupCodeExhausted,
    GroupExpired,
    GroupFull,
    GroupIntent,
    GroupNotFound,
    GroupNotOpen,
    GroupOnePerCustomer,
    GroupPricesInvalid,
    GroupVariantUnpriced,
)
from services.orders.orders.repository import OrderRow
from services.orders.orders.router import _PAY, OrdersDep
from services.orders.orders.schemas import OrderOut, PaymentSummary
from services.orders.orders.service import (
    CustomerLimitExceeded,
    OrderInFlight,
    OrderNotFound,
    PresaleClosed,
    PresaleNotOpen,
    PresalePaused,
    PresaleSoldOut,
    VariantUnknown,
)
from services.orders.presales.service import (
    CampaignNotFound,
    CampaignStateConflict,
    TermsLocked,
)
from shared.auth import AnyCaller, CatalogStaff, Customer, OptionalUser
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.idempotency import FreshKey, IdempotencyKeyRequired
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page
from shared.payments import PaymentRow

router = APIRouter(tags=["group buys"])

Code = Annotated[str, Path(min_length=1, max_length=16, pattern=r"^[0-9A-Z]+$")]
_AUTH = (Unauthorized, Forbidden)
_ORDER = (
    *_AUTH,
    *_PAY,
    CampaignNotFound,
    PresaleNotOpen,
    PresalePaused,
    PresaleClosed,
    PresaleSoldOut,
    VariantUnknown,
    CustomerLimitExceeded,
    OrderInFlight,
    GroupBuyNotEnabled,
    GroupVariantUnpriced,
    GroupOnePerCustomer,
)


def _share_base(request: Request) -> str:
    base: str = request.app.state.settings.group_share_base_url
    return base


async def _answer(
    request: Request, orders: OrdersDep, order: OrderRow, payment: PaymentRow
) -> GroupOrderOut:
    assert order.group_id is not None
    group = await service.placed_group(orders.db(), order.group_id, _share_base(request))
    # The buyer placed it: the payment's secret is theirs to complete it.
    return GroupOrderOut(
        order=OrderOut.of(order, PaymentSummary.of(payment, show_secret=True)), group=group
    )


@router.put(
    "/v1/presales/{campaign_id}/group-buy",
    response_model=OfferOut,
    summary="Enable or change group buying (staff; after the first payment only in buyers' favour)",
    responses=responses(
        *_AUTH, CampaignNotFound, CampaignStateConflict, GroupPricesInvalid, TermsLocked
    ),
)
async def put_offer(
    principal: CatalogStaff, campaign_id: uuid.UUID, body: OfferIn, session: SessionDep
) -> OfferOut:
    return OfferOut.of(await service.put_offer(session, principal, campaign_id, body))


@router.get(
    "/v1/presales/{campaign_id}/group-buy",
    response_model=OfferOut,
    summary="A campaign's group buying terms (no login; a draft's for its staff)",
    responses=responses(CampaignNotFound, GroupBuyNotEnabled),
)
async def get_offer(
    principal: OptionalUser, campaign_id: uuid.UUID, session: SessionDep
) -> OfferOut:
    return await service.get_offer(session, principal, campaign_id)


@router.post(
    "/v1/presales/{campaign_id}/groups",
    status_code=status.HTTP_201_CREATED,
    response_model=GroupOrderOut,
    summary="Open a group by ordering into it (the leader's price); share its code",
    responses=responses(*_ORDER, GroupCodeExhausted),
)
async def open_group(
    principal: Customer,
    campaign_id: uuid.UUID,
    body: GroupOrderIn,
    orders: OrdersDep,
    key: IdempotencyKeyRequired,
    fresh: FreshKey,
    request: Request,
) -> GroupOrderOut:
    order, payment = await orders.place(
        principal, campaign_id, body, key, fresh_key=fresh, group=GroupIntent.of(body)
    )
    return await _answer(request, orders, order, payment)


@router.get(
    "/v1/presales/{campaign_id}/groups",
    response_model=Page[GroupOut],
    summary="Open groups to join (凑团), soonest deadline first; without the caller's own",
    responses=responses(CampaignNotFound, InvalidCursor),
)
async def list_open(
    principal: OptionalUser,
    campaign_id: uuid.UUID,
    session: SessionDep,
    page: PageDep,
    request: Request,
) -> Page[GroupOut]:
    await service.joinable_campaign(session, campaign_id)
    stmt = repo.joinable_query(
        campaign_id, service.now_utc(), None if principal is None else principal.sub
    )
    sort, key = repo.group_columns()
    rows, cursor = await fetch_page(
        session, stmt, sort=sort, key=key, params=page, descending=False
    )
    groups = [repo.GroupRow(**r._mapping) for r in rows]
    items = await service.groups_out(session, groups, _share_base(request))
    return Page(items=items, next_cursor=cursor)


@router.get(
    "/v1/groups/{code}",
    response_model=GroupOut,
    summary="A group by its share code (no login): members, places and time left",
    responses=responses(GroupNotFound),
)
async def get_group(code: Code, session: SessionDep, request: Request) -> GroupOut:
    return await service.public_group(session, code, _share_base(request))


@router.post(
    "/v1/groups/{code}/orders",
    status_code=status.HTTP_201_CREATED,
    response_model=GroupOrderOut,
    summary="Join a group by ordering into it (the group price)",
    responses=responses(
        *_ORDER, GroupNotFound, GroupNotOpen, GroupExpired, GroupFull, GroupAlreadyMember
    ),
)
async def join_group(
    principal: Customer,
    code: Code,
    body: GroupOrderIn,
    orders: OrdersDep,
    key: IdempotencyKeyRequired,
    fresh: FreshKey,
    request: Request,
) -> GroupOrderOut:
    group = await service.group_for_joining(orders.db(), code)
    order, payment = await orders.place(
        principal,
        group.campaign_id,
        body,
        key,
        fresh_key=fresh,
        group=GroupIntent.of(body, group.id),
    )
    return await _answer(request, orders, order, payment)


@router.get(
    "/v1/orders/{order_id}/group",
    response_model=GroupOut,
    summary="The group an order was placed into, with its share code (buyer, staff)",
    responses=responses(*_AUTH, OrderNotFound, GroupNotFound),
)
async def group_of_order(
    principal: AnyCaller,
    order_id: uuid.UUID,
    session: SessionDep,
    orders: OrdersDep,
    request: Request,
) -> GroupOut:
    order = await orders.visible_order(session, principal, order_id)
    return await service.order_group(session, order.group_id, _share_base(request))
