"""Endpoints of commissions: distributors see theirs, staff their merchant's."""

from __future__ import annotations

from fastapi import APIRouter

from services.referrals.commissions import repository as repo
from services.referrals.commissions.repository import CommissionRow
from services.referrals.commissions.schemas import CommissionOut
from shared.auth import AnyCaller
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_owner


def commissions_router() -> APIRouter:
    router = APIRouter(tags=["commissions"])

    @router.get(
        "/v1/commissions",
        response_model=Page[CommissionOut],
        summary="Commissions, newest first: a distributor's own, staff their merchant's",
        responses=responses(Unauthorized, Forbidden, InvalidCursor),
    )
    async def list_commissions(
        principal: AnyCaller, session: SessionDep, page: PageDep
    ) -> Page[CommissionOut]:
        cols = repo.commission_columns()
        stmt = repo.commissions_query()
        stmt = scope_to_owner(
            stmt,
            principal,
            merchant_column=cols.merchant_id,
            owner_column=repo.distributor_user_column(),
        )
        rows, cursor = await fetch_page(
            session, stmt, sort=cols.created_at, key=cols.id, params=page
        )
        items = [CommissionOut.of(CommissionRow(**r._mapping)) for r in rows]
        return Page(items=items, next_cursor=cursor)

    return router
