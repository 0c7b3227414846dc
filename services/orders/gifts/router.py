"""Endpoints of gifts (送人): the recipient previews and claims a gift by its link; the buyer,
the recipient and staff follow it, each seeing their part; staff set the merchant's terms."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from services.orders.config import OrdersSettings
from services.orders.gifts import service
from services.orders.gifts.schemas import (
    ClaimIn,
    ClaimLookup,
    GiftOut,
    GiftPolicyIn,
    GiftPolicyOut,
    GiftPreview,
)
from services.orders.gifts.service import (
    GiftAlreadyClaimed,
    GiftClaimByBuyer,
    GiftNotClaimable,
    GiftNotFound,
)
from services.orders.presales.service import MerchantRequired, policy_merchant
from shared.auth import AnyCaller, AnyStaff, CatalogStaff, Customer
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.text import SafeStr

router = APIRouter(prefix="/v1/orders", tags=["gifts"])
_AUTH = (Unauthorized, Forbidden)
MerchantQuery = Annotated[
    SafeStr | None, Query(min_length=1, max_length=100, description="Admins name the merchant.")
]


def _claim_base_url(request: Request) -> str:
    settings: OrdersSettings = request.app.state.settings
    return settings.gift_claim_base_url


ClaimBaseUrl = Annotated[str, Depends(_claim_base_url)]


@router.get(
    "/gift-policy",
    response_model=GiftPolicyOut,
    summary="The merchant's terms for new gifts: claim days, redirect or refund (staff)",
    responses=responses(*_AUTH, MerchantRequired),
)
async def get_policy(
    principal: AnyStaff, session: SessionDep, merchant_id: MerchantQuery = None
) -> GiftPolicyOut:
    return await service.get_policy(session, policy_merchant(principal, merchant_id))


@router.put(
    "/gift-policy",
    response_model=GiftPolicyOut,
    summary="Set the terms of new gifts (gifts ordered before keep theirs)",
    responses=responses(*_AUTH, MerchantRequired),
)
async def put_policy(
    principal: CatalogStaff,
    body: GiftPolicyIn,
    session: SessionDep,
    merchant_id: MerchantQuery = None,
) -> GiftPolicyOut:
    merchant = policy_merchant(principal, merchant_id)
    return await service.put_policy(session, principal, merchant, body)


@router.post(
    "/gift-claims/preview",
    response_model=GiftPreview,
    summary="What a claim link holds: the message, the product, whether it can be claimed",
    responses=responses(*_AUTH, GiftNotFound),
)
async def preview(_: Customer, body: ClaimLookup, session: SessionDep) -> GiftPreview:
    return await service.preview(session, body.token)


@router.post(
    "/gift-claims",
    status_code=status.HTTP_201_CREATED,
    response_model=GiftOut,
    summary="Claim a gift with your own address (once; never by its buyer)",
    responses=responses(
        *_AUTH, GiftNotFound, GiftAlreadyClaimed, GiftClaimByBuyer, GiftNotClaimable
    ),
)
async def claim(
    principal: Customer, body: ClaimIn, session: SessionDep, base_url: ClaimBaseUrl
) -> GiftOut:
    gift, order = await service.claim(session, principal, body.token, body.address)
    return service.gift_out(gift, order, principal, base_url)


@router.get(
    "/{order_id}/gift",
    response_model=GiftOut,
    summary="A gift: its buyer sees claimed, shipped, delivered; its recipient where it ships",
    responses=responses(*_AUTH, GiftNotFound),
)
async def get(
    principal: AnyCaller, order_id: uuid.UUID, session: SessionDep, base_url: ClaimBaseUrl
) -> GiftOut:
    gift, order = await service.visible_gift(session, principal, order_id)
    return service.gift_out(gift, order, principal, base_url)
