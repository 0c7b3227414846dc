"""Endpoints of pledges: backers pledge, change, cancel and fix their payment; staff read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import Response

from services.crowdfund.pledges import reports
from services.crowdfund.pledges import repository as repo
from services.crowdfund.pledges import service as rules
from services.crowdfund.pledges.repository import PledgeRow
from services.crowdfund.pledges.schemas import (
    PaymentMethodIn,
    PledgeCreate,
    PledgeFilters,
    PledgeOut,
    PledgeTerms,
    ProjectStats,
    RefundIn,
    SetupSummary,
)
from services.crowdfund.pledges.service import (
    PledgeBelowMinimum,
    PledgeInFlight,
    PledgeLastHour,
    PledgeNotFound,
    PledgeRefundTooHigh,
    PledgeRegionInvalid,
    PledgeRewardInvalid,
    Pledges,
    PledgeStateConflict,
    ProjectClosed,
    ProjectNotLive,
    ProjectSuspended,
    RewardBackerLimit,
    RewardNotAvailable,
    RewardSoldOut,
)
from services.crowdfund.projects.service import ProjectNotFound, RewardNotFound
from shared.auth import AnyCaller, AnyStaff, Customer, MoneyStaff
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.idempotency import IDEMPOTENCY_ERRORS, IdempotencyKeyRequired
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page
from shared.payments import (
    PaymentAmountAboveMaximum,
    PaymentMethodUnavailable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)
from shared.timezones import TimezoneQuery, UnknownTimezone

_AUTH = (Unauthorized, Forbidden)
_PAY = (
    *IDEMPOTENCY_ERRORS,
    PaymentsNotConfigured,
    PaymentProviderUnavailable,
    PaymentProviderRejected,
    PaymentMethodUnavailable,
    PaymentAmountAboveMaximum,
)
_CHOICE = (
    ProjectNotFound,
    ProjectNotLive,
    ProjectSuspended,
    ProjectClosed,
    RewardNotFound,
    RewardSoldOut,
    RewardNotAvailable,
    RewardBackerLimit,
    PledgeRewardInvalid,
    PledgeBelowMinimum,
    PledgeRegionInvalid,
)


def _pledges(request: Request) -> Pledges:
    pledges: Pledges = request.app.state.pledges
    return pledges


PledgesDep = Annotated[Pledges, Depends(_pledges)]
router = APIRouter(tags=["pledges"])


@router.post(
    "/v1/projects/{project_id}/pledges",
    status_code=status.HTTP_201_CREATED,
    response_model=PledgeOut,
    summary="Pledge: hold the reward's places, save the card (or pay a wallet pledge now)",
    responses=responses(*_AUTH, *_PAY, *_CHOICE, PledgeInFlight),
)
async def place(
    principal: Customer,
    project_id: uuid.UUID,
    body: PledgeCreate,
    pledges: PledgesDep,
    key: IdempotencyKeyRequired,
) -> PledgeOut:
    return await pledges.place(principal, project_id, body, key)


@router.get(
    "/v1/pledges",
    response_model=Page[PledgeOut],
    summary="Pledges, newest first: backers see theirs, staff their merchant's",
    responses=responses(*_AUTH, InvalidCursor),
)
async def list_pledges(
    principal: AnyCaller,
    session: SessionDep,
    page: PageDep,
    filters: Annotated[PledgeFilters, Depends()],
) -> Page[PledgeOut]:
    cols = repo.pledge_columns()
    stmt = rules.visible_pledges(principal, filters)
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    pledges = [PledgeRow(**r._mapping) for r in rows]
    items = await repo.get_items(session, [x.id for x in pledges])
    return Page(
        items=[PledgeOut.of(x, [i for i in items if i.pledge_id == x.id]) for x in pledges],
        next_cursor=cursor,
    )


@router.get(
    "/v1/pledges/{pledge_id}",
    response_model=PledgeOut,
    summary="A pledge, with its saved card or the payment to complete",
    responses=responses(*_AUTH, PledgeNotFound),
)
async def get(principal: AnyCaller, pledge_id: uuid.UUID, pledges: PledgesDep) -> PledgeOut:
    pledge = await pledges.visible_pledge(principal, pledge_id)
    if pledge.status == "pending" and pledge.customer_id == principal.sub:
        # Back from 3D Secure: a card saved meanwhile confirms the pledge now.
        setup = await pledges.setup_of(pledge)
        if setup is not None:
            await pledges.card_saved(pledge.id, setup)
    return await pledges.out(pledge.id, principal)


@router.put(
    "/v1/pledges/{pledge_id}",
    response_model=PledgeOut,
    summary="Change the reward, add-ons, region or amount until the deadline",
    responses=responses(*_AUTH, *_CHOICE, PledgeNotFound, PledgeStateConflict, PledgeLastHour),
)
async def change(
    principal: Customer,
    pledge_id: uuid.UUID,
    body: PledgeTerms,
    session: SessionDep,
    pledges: PledgesDep,
) -> PledgeOut:
    pledge = await pledges.change(session, principal, pledge_id, body)
    return PledgeOut.of(pledge, await repo.get_items(session, [pledge.id]))


@router.post(
    "/v1/pledges/{pledge_id}/cancel",
    response_model=PledgeOut,
    summary="Cancel until the deadline: the places go back, anything paid is refunded",
    responses=responses(
        *_AUTH,
        PledgeNotFound,
        PledgeStateConflict,
        PledgeLastHour,
        ProjectNotFound,
        ProjectNotLive,
        ProjectClosed,
    ),
)
async def cancel(
    principal: Customer, pledge_id: uuid.UUID, session: SessionDep, pledges: PledgesDep
) -> PledgeOut:
    pledge = await pledges.cancel(session, principal, pledge_id)
    return PledgeOut.of(pledge, [])


@router.post(
    "/v1/pledges/{pledge_id}/refunds",
    response_model=PledgeOut,
    summary="Refund a paid pledge, all or part (staff; after settlement: next statement)",
    responses=responses(*_AUTH, *IDEMPOTENCY_ERRORS, PledgeNotFound, PledgeRefundTooHigh),
)
async def staff_refund(
    principal: MoneyStaff,
    pledge_id: uuid.UUID,
    body: RefundIn,
    session: SessionDep,
    pledges: PledgesDep,
    key: IdempotencyKeyRequired,
) -> PledgeOut:
    pledge = await pledges.staff_refund(session, principal, pledge_id, body.amount)
    return PledgeOut.of(pledge, await repo.get_items(session, [pledge.id]))


@router.post(
    "/v1/pledges/{pledge_id}/payment-method",
    response_model=SetupSummary,
    summary="Save another card for this pledge (also to fix a failed charge: tried at once)",
    responses=responses(*_AUTH, *_PAY, PledgeNotFound, PledgeStateConflict),
)
async def change_card(
    principal: Customer,
    pledge_id: uuid.UUID,
    body: PaymentMethodIn,
    pledges: PledgesDep,
    key: IdempotencyKeyRequired,
) -> SetupSummary:
    setup = await pledges.change_card(principal, pledge_id, body.payment_method, key)
    return SetupSummary.of(setup, show_secret=True)


@router.get(
    "/v1/projects/{project_id}/stats",
    response_model=ProjectStats,
    tags=["projects"],
    summary="Progress by status, day and channel (referral code, source); staff",
    responses=responses(*_AUTH, ProjectNotFound, UnknownTimezone),
)
async def stats(
    principal: AnyStaff,
    project_id: uuid.UUID,
    session: SessionDep,
    tz: TimezoneQuery = "Asia/Shanghai",
) -> ProjectStats:
    return await reports.project_stats(session, principal, project_id, tz)


@router.get(
    "/v1/projects/{project_id}/backers.csv",
    response_class=Response,
    tags=["projects"],
    summary="Backers with rewards, add-ons and shipping, for fulfilment (staff)",
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per pledge."},
        **responses(*_AUTH, ProjectNotFound),
    },
)
async def backers(principal: AnyStaff, project_id: uuid.UUID, session: SessionDep) -> Response:
    body = await reports.backers_csv(session, principal, project_id)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="backers-{project_id}.csv"'},
    )
