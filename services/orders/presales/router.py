"""Endpoints of pre-sale campaigns: staff manage them, anyone reads their public progress."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from services.orders.presales import repository as repo
from services.orders.presales import service
from services.orders.presales.schemas import (
    CampaignCreate,
    CampaignOut,
    CampaignStatus,
    CampaignTerms,
    MerchantPolicyIn,
    MerchantPolicyOut,
    PublicProgress,
)
from services.orders.presales.service import (
    CampaignNotFound,
    CampaignStateConflict,
    CapacityBelowMinimum,
    ClosesInPast,
    DepositAbovePrice,
    DepositInvalid,
    EarlyBirdInvalid,
    MerchantRequired,
    ScheduleInvalid,
    TermsLocked,
    TiersInvalid,
    VariantsInvalid,
)
from shared.auth import AnyStaff, CatalogStaff
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.money import UnknownCurrency
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_merchant

_AUTH = (Unauthorized, Forbidden)
_TERMS = (
    TiersInvalid,
    VariantsInvalid,
    DepositInvalid,
    DepositAbovePrice,
    EarlyBirdInvalid,
    ClosesInPast,
    ScheduleInvalid,
    CapacityBelowMinimum,
)


async def campaign_out(session: SessionDep, campaign_id: uuid.UUID) -> CampaignOut:
    campaign = await repo.get_campaign(session, campaign_id)
    if campaign is None:
        raise CampaignNotFound()
    return CampaignOut.of(campaign, await repo.get_variants(session, campaign_id))


def presales_router() -> APIRouter:
    router = APIRouter(prefix="/v1/presales", tags=["presales"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=CampaignOut,
        summary="Create a pre-sale campaign (a draft)",
        responses=responses(*_AUTH, *_TERMS, MerchantRequired, UnknownCurrency),
    )
    async def create(
        principal: CatalogStaff, body: CampaignCreate, session: SessionDep
    ) -> CampaignOut:
        campaign_id = await service.create_campaign(session, principal, body)
        return await campaign_out(session, campaign_id)

    @router.get(
        "",
        response_model=Page[CampaignOut],
        summary="The merchant's campaigns, newest first (admins: all)",
        responses=responses(*_AUTH, InvalidCursor),
    )
    async def list_campaigns(
        principal: AnyStaff,
        session: SessionDep,
        page: PageDep,
        status_is: Annotated[CampaignStatus | None, Query(alias="status")] = None,
    ) -> Page[CampaignOut]:
        merchant, sort, key = repo.campaign_columns()
        stmt = scope_to_merchant(repo.campaigns_query(), principal, merchant)
        if status_is is not None:
            stmt = stmt.where(repo.c.c.status == status_is)
        rows, cursor = await fetch_page(session, stmt, sort=sort, key=key, params=page)
        campaigns = [repo.CampaignRow.of(row) for row in rows]
        variants = await repo.variants_of(session, [c.id for c in campaigns])
        items = [CampaignOut.of(c, variants[c.id]) for c in campaigns]
        return Page(items=items, next_cursor=cursor)

    @router.get(
        "/merchant-policy",
        response_model=MerchantPolicyOut,
        summary="The merchant's defaults for new campaigns (staff; admins name the merchant)",
        responses=responses(*_AUTH, MerchantRequired),
    )
    async def get_policy(
        principal: AnyStaff,
        session: SessionDep,
        merchant_id: Annotated[str | None, Query(max_length=100)] = None,
    ) -> MerchantPolicyOut:
        return await service.get_policy(session, service.policy_merchant(principal, merchant_id))

    @router.put(
        "/merchant-policy",
        response_model=MerchantPolicyOut,
        summary="Set the return window of new campaigns (campaigns keep theirs)",
        responses=responses(*_AUTH, MerchantRequired),
    )
    async def put_policy(
        principal: CatalogStaff,
        body: MerchantPolicyIn,
        session: SessionDep,
        merchant_id: Annotated[str | None, Query(max_length=100)] = None,
    ) -> MerchantPolicyOut:
        merchant = service.policy_merchant(principal, merchant_id)
        return await service.put_policy(session, principal, merchant, body)

    @router.get(
        "/{campaign_id}",
        response_model=CampaignOut,
        summary="A campaign, as its staff see it",
        responses=responses(*_AUTH, CampaignNotFound),
    )
    async def get(principal: AnyStaff, campaign_id: uuid.UUID, session: SessionDep) -> CampaignOut:
        await service.staff_campaign(session, principal, campaign_id)
        return await campaign_out(session, campaign_id)

    @router.put(
        "/{campaign_id}",
        response_model=CampaignOut,
        summary="Change the terms (after the first deposit: only in the buyers' favour)",
        responses=responses(*_AUTH, *_TERMS, CampaignNotFound, CampaignStateConflict, TermsLocked),
    )
    async def update(
        principal: CatalogStaff,
        campaign_id: uuid.UUID,
        body: CampaignTerms,
        session: SessionDep,
        request: Request,
    ) -> CampaignOut:
        await service.update_terms(session, request.app.state.tables, principal, campaign_id, body)
        return await campaign_out(session, campaign_id)

    @router.post(
        "/{campaign_id}/publish",
        response_model=CampaignOut,
        summary="Publish a draft: visible now, open from its opening time",
        responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict, ClosesInPast),
    )
    async def publish(
        principal: CatalogStaff, campaign_id: uuid.UUID, session: SessionDep, request: Request
    ) -> CampaignOut:
        await service.publish(session, request.app.state.tables, principal, campaign_id)
        return await campaign_out(session, campaign_id)

    @router.post(
        "/{campaign_id}/pause",
        response_model=CampaignOut,
        summary="Stop taking orders (the kill switch); payments in flight still land",
        responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict),
    )
    async def pause(
        principal: CatalogStaff, campaign_id: uuid.UUID, session: SessionDep
    ) -> CampaignOut:
        await service.set_paused(session, principal, campaign_id, paused=True)
        return await campaign_out(session, campaign_id)

    @router.post(
        "/{campaign_id}/resume",
        response_model=CampaignOut,
        summary="Take orders again",
        responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict),
    )
    async def resume(
        principal: CatalogStaff, campaign_id: uuid.UUID, session: SessionDep
    ) -> CampaignOut:
        await service.set_paused(session, principal, campaign_id, paused=False)
        return await campaign_out(session, campaign_id)

    @router.get(
        "/{campaign_id}/public",
        response_model=PublicProgress,
        summary="Progress for the mini-program (no login): units, buyers, tier, time left",
        responses=responses(CampaignNotFound),
    )
    async def public(campaign_id: uuid.UUID, session: SessionDep) -> PublicProgress:
        return await service.public_progress(session, campaign_id)

    return router
