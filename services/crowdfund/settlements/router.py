"""Endpoints of settlements: the creator's staff read their statements; admins record the
payout."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from services.crowdfund.projects.router import Admin
from services.crowdfund.settlements import repository as repo
from services.crowdfund.settlements import service
from services.crowdfund.settlements.repository import SettlementRow
from services.crowdfund.settlements.schemas import PaidIn, SettlementOut
from services.crowdfund.settlements.service import SettlementNotFound, SettlementStateConflict
from shared.auth import AnyStaff
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_merchant

_AUTH = (Unauthorized, Forbidden)
router = APIRouter(tags=["settlements"])


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
    "/v1/projects/settlements/{settlement_id}/paid",
    response_model=SettlementOut,
    summary="Record the payout made outside, with its reference (admins)",
    responses=responses(*_AUTH, SettlementNotFound, SettlementStateConflict),
)
async def mark_paid(
    principal: Admin, settlement_id: uuid.UUID, body: PaidIn, session: SessionDep
) -> SettlementOut:
    row = await service.mark_paid(session, principal, settlement_id, body.external_reference)
    return SettlementOut.of(row)
