"""Endpoints of withdrawals: distributors request, staff approve, reject, pay."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, status

from services.referrals.programs.service import DistributorNotFound, DistributorStateConflict
from services.referrals.withdrawals import repository as repo
from services.referrals.withdrawals import service
from services.referrals.withdrawals.repository import WithdrawalRow
from services.referrals.withdrawals.schemas import DecisionIn, PaidIn, WithdrawalIn, WithdrawalOut
from services.referrals.withdrawals.service import (
    AboveAvailable,
    BelowMinimum,
    KycRequired,
    WithdrawalNotFound,
    WithdrawalStateConflict,
)
from shared.auth import AnyCaller, MoneyStaff, Principal, require_roles
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.idempotency import IDEMPOTENCY_ERRORS, IdempotencyKeyRequired
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_owner
from shared.payments import PaymentContext

Customer = Annotated[Principal, require_roles("customer", "distributor")]
_AUTH = (Unauthorized, Forbidden)
_STAFF_ERRORS = (*_AUTH, WithdrawalNotFound, WithdrawalStateConflict)


def withdrawals_router() -> APIRouter:
    router = APIRouter(prefix="/v1/withdrawals", tags=["withdrawals"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=WithdrawalOut,
        summary="Withdraw what is available (after what is owed and the fee)",
        responses=responses(
            *_AUTH,
            *IDEMPOTENCY_ERRORS,
            DistributorNotFound,
            DistributorStateConflict,
            KycRequired,
            BelowMinimum,
            AboveAvailable,
        ),
    )
    async def request(
        principal: Customer, body: WithdrawalIn, session: SessionDep, key: IdempotencyKeyRequired
    ) -> WithdrawalOut:
        return WithdrawalOut.of(
            await service.request(session, principal, body.distributor_id, body.amount)
        )

    @router.get(
        "",
        response_model=Page[WithdrawalOut],
        summary="Withdrawals, newest first: a distributor's own, staff their merchant's",
        responses=responses(*_AUTH, InvalidCursor),
    )
    async def list_withdrawals(
        principal: AnyCaller, session: SessionDep, page: PageDep
    ) -> Page[WithdrawalOut]:
        cols = repo.columns()
        stmt = repo.withdrawals_query()
        stmt = scope_to_owner(
            stmt,
            principal,
            merchant_column=cols.merchant_id,
            owner_column=repo.distributor_user_column(),
        )
        rows, cursor = await fetch_page(
            session, stmt, sort=cols.created_at, key=cols.id, params=page
        )
        return Page(
            items=[WithdrawalOut.of(WithdrawalRow(**r._mapping)) for r in rows], next_cursor=cursor
        )

    @router.post(
        "/{withdrawal_id}/approve",
        response_model=WithdrawalOut,
        summary="Approve a requested withdrawal (staff): paid by a transfer to the "
        "distributor's payout account when they have one, else by staff",
        responses=responses(*_STAFF_ERRORS),
    )
    async def approve(
        principal: MoneyStaff, withdrawal_id: uuid.UUID, session: SessionDep, request: Request
    ) -> WithdrawalOut:
        transfers = isinstance(getattr(request.app.state, "payments", None), PaymentContext)
        return WithdrawalOut.of(
            await service.approve(session, principal, withdrawal_id, transfers=transfers)
        )

    @router.post(
        "/{withdrawal_id}/paid",
        response_model=WithdrawalOut,
        summary="Record that an approved withdrawal was paid outside, with its reference "
        "(staff; not one paid by transfer)",
        responses=responses(*_STAFF_ERRORS),
    )
    async def paid(
        principal: MoneyStaff, withdrawal_id: uuid.UUID, body: PaidIn, session: SessionDep
    ) -> WithdrawalOut:
        return WithdrawalOut.of(
            await service.mark_paid(session, principal, withdrawal_id, body.external_reference)
        )

    @router.post(
        "/{withdrawal_id}/reject",
        response_model=WithdrawalOut,
        summary="Reject a withdrawal: the money returns to available (staff)",
        responses=responses(*_STAFF_ERRORS),
    )
    async def reject(
        principal: MoneyStaff, withdrawal_id: uuid.UUID, body: DecisionIn, session: SessionDep
    ) -> WithdrawalOut:
        return WithdrawalOut.of(
            await service.give_back(
                session, principal, withdrawal_id, status="rejected", reason=body.reason
            )
        )

    @router.post(
        "/{withdrawal_id}/failed",
        response_model=WithdrawalOut,
        summary="Record that the payout failed: the money returns to available (staff)",
        responses=responses(*_STAFF_ERRORS),
    )
    async def failed(
        principal: MoneyStaff, withdrawal_id: uuid.UUID, body: DecisionIn, session: SessionDep
    ) -> WithdrawalOut:
        return WithdrawalOut.of(
            await service.give_back(
                session, principal, withdrawal_id, status="failed", reason=body.reason
            )
        )

    return router
