"""Endpoints of settlements: the creator's staff read their statements and set the payout
account; admins start the payout's transfer or record a payout made outside."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from services.crowdfund.projects.router import Admin
from services.crowdfund.projects.service import ProjectNotFound
from services.crowdfund.settlements import repository as repo
from services.crowdfund.settlements import service
from services.crowdfund.settlements.repository import SettlementRow
from services.crowdfund.settlements.schemas import (
    PaidIn,
    PayoutAccountIn,
    PayoutAccountOut,
    SettlementOut,
)
from services.crowdfund.settlements.service import (
    PayoutAccountMissing,
    SettlementNotFound,
    SettlementOwed,
    SettlementStateConflict,
)
from shared.auth import AnyStaff, MoneyStaff
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_merchant
from shared.payments import PaymentContext, PaymentsNotConfigured, PayoutAccountInvalid

_AUTH = (Unauthorized, Forbidden)
router = APIRouter(tags=["settlements"])


@router.put(
    "/v1/projects/{project_id}/payout-account",
    response_model=PayoutAccountOut,
    summary="Set or remove the creator's Stripe connected account its payout is transferred "
    "to (money staff)",
    responses=responses(*_AUTH, ProjectNotFound, PayoutAccountInvalid),
)
async def put_payout_account(
    principal: MoneyStaff, project_id: uuid.UUID, body: PayoutAccountIn, session: SessionDep
) -> PayoutAccountOut:
    row = await service.set_payout_account(session, principal, project_id, body.payout_account)
    return PayoutAccountOut(project_id=row.id, payout_account=row.payout_account)


@router.get(
    "/v1/projects/{project_id}/settlement",
    response_model=SettlementOut,
    summary="The project's statement, once its fix window has ended (staff)",
    responses=responses(*_AUTH, SettlementNotFound),
)
async def project_settlement(
    principal: AnyStaff, project_id: uuid.UUID, session: SessionDep
) -> SettlementOut:
    return SettlementOut.of(await service.project_settlement(session, principal, project_id))


@router.get(
    "/v1/projects/settlements",
    response_model=Page[SettlementOut],
    summary="Statements, newest first: staff their merchant's, admins all",
    responses=responses(*_AUTH, InvalidCursor),
)
async def list_settlements(
    principal: AnyStaff, session: SessionDep, page: PageDep
) -> Page[SettlementOut]:
    cols = repo.settlement_columns()
    stmt = scope_to_merchant(repo.settlements_query(), principal, cols.merchant_id)
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    return Page(
        items=[SettlementOut.of(SettlementRow(**r._mapping)) for r in rows], next_cursor=cursor
    )


@router.post(
    "/v1/projects/settlements/{settlement_id}/payout",
    response_model=SettlementOut,
    summary="Transfer the payout to the project's payout account: a pending statement, or a "
    "new attempt after a failed one (admins)",
    responses=responses(
        *_AUTH,
        SettlementNotFound,
        SettlementOwed,
        SettlementStateConflict,
        PayoutAccountMissing,
        PaymentsNotConfigured,
    ),
)
async def start_payout(
    principal: Admin, settlement_id: uuid.UUID, session: SessionDep, request: Request
) -> SettlementOut:
    transfers = isinstance(getattr(request.app.state, "payments", None), PaymentContext)
    row = await service.start_payout(session, principal, settlement_id, transfers=transfers)
    return SettlementOut.of(row)


@router.post(
    "/v1/projects/settlements/{settlement_id}/paid",
    response_model=SettlementOut,
    summary="Record the payout made outside, with its reference: a pending statement, or one "
    "whose transfer failed (admins)",
    responses=responses(*_AUTH, SettlementNotFound, SettlementOwed, SettlementStateConflict),
)
async def mark_paid(
    principal: Admin, settlement_id: uuid.UUID, body: PaidIn, session: SessionDep
) -> SettlementOut:
    row = await service.mark_paid(session, principal, settlement_id, body.external_reference)
    return SettlementOut.of(row)
