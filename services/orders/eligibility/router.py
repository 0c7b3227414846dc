"""Endpoints of eligibility: staff keep member tiers, set who may order from a campaign and
issue purchase codes; customers redeem codes and reserve; anyone checks a draw.

Included before the campaigns' router: its static paths (``/member-tiers``) must win over
``/v1/presales/{campaign_id}``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from services.orders.eligibility import repository as repo
from services.orders.eligibility import service
from services.orders.eligibility.schemas import (
    CodeBatchIn,
    CodeBatchOut,
    CodeOut,
    DrawOut,
    EligibilityIn,
    EligibilityOut,
    EntryOut,
    MemberIn,
    MemberOut,
    RedeemIn,
    ReservationOut,
    TiersIn,
    TiersOut,
)
from services.orders.eligibility.service import (
    DrawDone,
    EligibilityInvalid,
    EligibilityTermsLocked,
    MemberTierInUse,
    MemberTiersInvalid,
    MemberTierUnknown,
    PurchaseCodeBatchInvalid,
    PurchaseCodeExpired,
    PurchaseCodeInvalid,
    PurchaseCodeTaken,
    PurchaseCodeUsed,
    ReservationClosed,
    ReservationNotFound,
    ReservationsNotOffered,
)
from services.orders.presales.service import (
    CampaignNotFound,
    CampaignStateConflict,
    MerchantRequired,
    now_utc,
    policy_merchant,
    staff_campaign,
)
from shared.auth import AnyStaff, CatalogStaff, Customer, OptionalUser
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page
from shared.text import SafeStr

router = APIRouter(prefix="/v1/presales", tags=["eligibility"])
_AUTH = (Unauthorized, Forbidden)
MerchantQuery = Annotated[
    str | None, Query(max_length=100, description="Admins name the merchant.")
]
CustomerPath = Annotated[SafeStr, Path(min_length=1, max_length=100)]


@router.get(
    "/member-tiers",
    response_model=TiersOut,
    summary="The merchant's member tiers, best first (staff)",
    responses=responses(*_AUTH, MerchantRequired),
)
async def get_tiers(
    principal: AnyStaff, session: SessionDep, merchant_id: MerchantQuery = None
) -> TiersOut:
    return await service.get_tiers(session, policy_merchant(principal, merchant_id))


@router.put(
    "/member-tiers",
    response_model=TiersOut,
    summary="Set the merchant's member tiers (the whole list; one still held cannot go)",
    responses=responses(*_AUTH, MerchantRequired, MemberTiersInvalid, MemberTierInUse),
)
async def put_tiers(
    principal: CatalogStaff, body: TiersIn, session: SessionDep, merchant_id: MerchantQuery = None
) -> TiersOut:
    return await service.put_tiers(session, policy_merchant(principal, merchant_id), body)


@router.get(
    "/members/{customer_id}",
    response_model=MemberOut,
    summary="A customer's member tier with the merchant (staff)",
    responses=responses(*_AUTH, MerchantRequired),
)
async def get_member(
    principal: AnyStaff,
    customer_id: CustomerPath,
    session: SessionDep,
    merchant_id: MerchantQuery = None,
) -> MemberOut:
    return await service.get_member(session, policy_merchant(principal, merchant_id), customer_id)


@router.put(
    "/members/{customer_id}",
    response_model=MemberOut,
    summary="Set a customer's member tier (null: none)",
    responses=responses(*_AUTH, MerchantRequired, MemberTierUnknown),
)
async def put_member(
    principal: CatalogStaff,
    customer_id: CustomerPath,
    body: MemberIn,
    session: SessionDep,
    merchant_id: MerchantQuery = None,
) -> MemberOut:
    merchant = policy_merchant(principal, merchant_id)
    await service.set_member(
        session, merchant, customer_id, body.tier_code, at=now_utc(), by=principal.sub
    )
    return await service.get_member(session, merchant, customer_id)


@router.get(
    "/{campaign_id}/eligibility",
    response_model=EligibilityOut,
    summary="Who may order: everybody, member tiers (limits, prices) or code holders",
    responses=responses(CampaignNotFound),
)
async def get_eligibility(
    principal: OptionalUser, campaign_id: uuid.UUID, session: SessionDep
) -> EligibilityOut:
    campaign = await service.visible_campaign(session, principal, campaign_id)
    return await service.eligibility_out(session, campaign)


@router.put(
    "/{campaign_id}/eligibility",
    response_model=EligibilityOut,
    summary="Set who may order (after the first payment: only in the buyers' favour)",
    responses=responses(
        *_AUTH,
        CampaignNotFound,
        CampaignStateConflict,
        EligibilityInvalid,
        EligibilityTermsLocked,
        MemberTierUnknown,
    ),
)
async def put_eligibility(
    principal: CatalogStaff, campaign_id: uuid.UUID, body: EligibilityIn, session: SessionDep
) -> EligibilityOut:
    campaign = await service.put_eligibility(session, principal, campaign_id, body)
    return await service.eligibility_out(session, campaign)


@router.post(
    "/{campaign_id}/purchase-codes",
    status_code=status.HTTP_201_CREATED,
    response_model=CodeBatchOut,
    summary="Issue a batch of purchase codes (F码), shown this once",
    responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict, PurchaseCodeBatchInvalid),
)
async def issue_codes(
    principal: CatalogStaff, campaign_id: uuid.UUID, body: CodeBatchIn, session: SessionDep
) -> CodeBatchOut:
    return await service.issue_codes(session, principal, campaign_id, body)


@router.get(
    "/{campaign_id}/purchase-codes",
    response_model=Page[CodeOut],
    summary="The campaign's codes, newest first (their last four characters only)",
    responses=responses(*_AUTH, CampaignNotFound, InvalidCursor),
)
async def list_codes(
    principal: AnyStaff, campaign_id: uuid.UUID, session: SessionDep, page: PageDep
) -> Page[CodeOut]:
    await staff_campaign(session, principal, campaign_id)
    sort, key = repo.code_columns()
    rows, cursor = await fetch_page(
        session, repo.codes_query(campaign_id), sort=sort, key=key, params=page
    )
    now = now_utc()
    return Page(
        items=[CodeOut.of(repo.CodeRow(**r._mapping), now) for r in rows], next_cursor=cursor
    )


@router.post(
    "/{campaign_id}/purchase-codes/redeem",
    response_model=CodeOut,
    summary="Redeem a purchase code: it is yours for good, and your next order uses it",
    responses=responses(
        *_AUTH,
        CampaignNotFound,
        PurchaseCodeInvalid,
        PurchaseCodeExpired,
        PurchaseCodeTaken,
        PurchaseCodeUsed,
    ),
)
async def redeem(
    principal: Customer, campaign_id: uuid.UUID, body: RedeemIn, session: SessionDep
) -> CodeOut:
    return await service.redeem(session, principal, campaign_id, body.code)


@router.post(
    "/{campaign_id}/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    summary="Reserve a place in the draw before the opening (again: the same place, 200)",
    responses=responses(*_AUTH, CampaignNotFound, ReservationsNotOffered, ReservationClosed),
)
async def reserve(
    principal: Customer, campaign_id: uuid.UUID, session: SessionDep, response: Response
) -> ReservationOut:
    reservation, made = await service.reserve(session, principal, campaign_id)
    if not made:
        response.status_code = status.HTTP_200_OK
    return reservation


@router.get(
    "/{campaign_id}/reservations/mine",
    response_model=ReservationOut,
    summary="Your reservation: reserved, won (with your code) or not drawn",
    responses=responses(*_AUTH, ReservationNotFound),
)
async def my_reservation(
    principal: Customer, campaign_id: uuid.UUID, session: SessionDep
) -> ReservationOut:
    return await service.my_reservation(session, principal, campaign_id)


@router.get(
    "/{campaign_id}/draw",
    response_model=DrawOut,
    summary="The draw's public record: commitment, then seed, entries and digest (no login)",
    responses=responses(CampaignNotFound, ReservationsNotOffered),
)
async def get_draw(campaign_id: uuid.UUID, session: SessionDep) -> DrawOut:
    return await service.draw_out(session, campaign_id)


@router.post(
    "/{campaign_id}/draw",
    response_model=DrawOut,
    summary="Draw now, before the opening (otherwise the opening draws)",
    responses=responses(
        *_AUTH, CampaignNotFound, CampaignStateConflict, ReservationsNotOffered, DrawDone
    ),
)
async def draw(principal: CatalogStaff, campaign_id: uuid.UUID, session: SessionDep) -> DrawOut:
    await service.draw_now(session, principal, campaign_id)
    return await service.draw_out(session, campaign_id)


@router.get(
    "/{campaign_id}/draw/entries",
    response_model=Page[EntryOut],
    summary="Every entry of the draw with its ticket and rank, first drawn first (no login)",
    responses=responses(CampaignNotFound, ReservationsNotOffered, InvalidCursor),
)
async def draw_entries(
    campaign_id: uuid.UUID, session: SessionDep, page: PageDep
) -> Page[EntryOut]:
    await service.draw_out(session, campaign_id)
    sort, key = repo.entry_columns()
    rows, cursor = await fetch_page(
        session,
        repo.entries_query(campaign_id),
        sort=sort,
        key=key,
        params=page,
        descending=False,
    )
    items = [
        EntryOut(reservation_id=r.id, ticket=r.ticket, rank=r.rank, won=r.status == "won")
        for r in rows
    ]
    return Page(items=items, next_cursor=cursor)
