"""Endpoints of referral programs (commission rules) and distributors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions.service import balances, balances_of
from services.referrals.programs import repository as repo
from services.referrals.programs import service
from services.referrals.programs.repository import DistributorRow
from services.referrals.programs.schemas import (
    AddIn,
    ApplyIn,
    DistributorOut,
    OverrideIn,
    OverrideOut,
    PayoutAccountIn,
    ProgramIn,
    ProgramOut,
)
from services.referrals.programs.service import (
    AlreadyDistributor,
    DistributorNotFound,
    DistributorStateConflict,
    InviteCodeInvalid,
    ProgramNotFound,
    RatesOverCap,
)
from shared.auth import (
    AnyCaller,
    AnyStaff,
    CatalogStaff,
    MoneyStaff,
    Principal,
    ensure_staff_of,
    require_merchant_role,
    require_roles,
)
from shared.db import SessionDep
from shared.errors import DomainError, Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_merchant
from shared.payments import PayoutAccountInvalid

Customer = Annotated[Principal, require_roles("customer")]
# The distributor themselves (checked by the service), or the merchant's money staff.
PayeeOrMoneyStaff = Annotated[
    Principal, require_merchant_role("owner", "finance", others=("customer", "distributor"))
]
TargetId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]
MerchantQuery = Annotated[
    str | None, Query(max_length=100, description="Admins name the merchant.")
]
_AUTH = (Unauthorized, Forbidden)


class MerchantRequired(DomainError):
    status = 422
    code = "merchant_required"
    title = "Admins name the merchant"


def merchant_for(principal: Principal, requested: str | None) -> str:
    """The merchant a staff request is for: an admin's named one, a staff member's own (a
    staff member naming another merchant is refused)."""
    if principal.is_admin:
        if requested is None:
            raise MerchantRequired(field="merchant_id")
        return requested
    merchant = requested or principal.merchant_id or ""
    ensure_staff_of(principal, merchant)
    return merchant


async def _out(session: AsyncSession, row: DistributorRow) -> DistributorOut:
    return DistributorOut.of(row, await balances(session, row.id))


def programs_router() -> APIRouter:
    router = APIRouter(tags=["referrals"])

    @router.put(
        "/v1/commission-rules",
        response_model=ProgramOut,
        summary="The merchant's program and commission rules (staff)",
        responses=responses(*_AUTH, RatesOverCap, MerchantRequired),
    )
    async def put_rules(
        principal: MoneyStaff,
        body: ProgramIn,
        session: SessionDep,
        merchant_id: MerchantQuery = None,
    ) -> ProgramOut:
        merchant = merchant_for(principal, merchant_id)
        return ProgramOut.of(await service.put_rules(session, principal, merchant, body))

    @router.put(
        "/v1/commission-rules/overrides/{target_type}/{target_id}",
        response_model=OverrideOut,
        summary="Rates for one campaign or project, under the program's cap (staff)",
        responses=responses(*_AUTH, RatesOverCap, ProgramNotFound, MerchantRequired),
    )
    async def put_override(
        principal: MoneyStaff,
        target_type: Literal["presale", "project"],
        target_id: TargetId,
        body: OverrideIn,
        session: SessionDep,
        merchant_id: MerchantQuery = None,
    ) -> OverrideOut:
        merchant = merchant_for(principal, merchant_id)
        row = await service.put_override(session, principal, merchant, target_type, target_id, body)
        return OverrideOut.of(row)

    @router.delete(
        "/v1/commission-rules/overrides/{target_type}/{target_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Back to the program's rates for this campaign or project (staff)",
        responses=responses(*_AUTH, MerchantRequired),
    )
    async def delete_override(
        principal: MoneyStaff,
        target_type: Literal["presale", "project"],
        target_id: TargetId,
        session: SessionDep,
        merchant_id: MerchantQuery = None,
    ) -> None:
        merchant = merchant_for(principal, merchant_id)
        await repo.delete_override(session, merchant, target_type, target_id)

    @router.get(
        "/v1/commission-rules/overrides",
        response_model=list[OverrideOut],
        summary="The merchant's per-campaign and per-project rates (staff)",
        responses=responses(*_AUTH, MerchantRequired),
    )
    async def list_overrides(
        principal: AnyStaff, session: SessionDep, merchant_id: MerchantQuery = None
    ) -> list[OverrideOut]:
        merchant = merchant_for(principal, merchant_id)
        return [OverrideOut.of(o) for o in await repo.overrides(session, merchant)]

    @router.get(
        "/v1/commission-rules",
        response_model=ProgramOut,
        summary="A merchant's program rules (anyone: distributors read what they earn)",
        responses=responses(*_AUTH, ProgramNotFound),
    )
    async def get_rules(
        principal: AnyCaller,
        session: SessionDep,
        merchant_id: Annotated[str, Query(min_length=1, max_length=100)],
    ) -> ProgramOut:
        return ProgramOut.of(await service.program(session, merchant_id))

    @router.post(
        "/v1/distributors",
        status_code=status.HTTP_201_CREATED,
        response_model=DistributorOut,
        summary="Join a merchant's program (at once when open, else pending approval)",
        responses=responses(*_AUTH, ProgramNotFound, AlreadyDistributor, InviteCodeInvalid),
    )
    async def join(principal: Customer, body: ApplyIn, session: SessionDep) -> DistributorOut:
        return await _out(session, await service.apply(session, principal, body))

    @router.post(
        "/v1/distributors/direct",
        status_code=status.HTTP_201_CREATED,
        response_model=DistributorOut,
        summary="Add one of the merchant's own people as a distributor (staff, 全员分销)",
        responses=responses(*_AUTH, ProgramNotFound, AlreadyDistributor, MerchantRequired),
    )
    async def add(
        principal: CatalogStaff, body: AddIn, session: SessionDep, merchant_id: MerchantQuery = None
    ) -> DistributorOut:
        merchant = merchant_for(principal, merchant_id)
        return await _out(session, await service.add(session, principal, merchant, body))

    @router.get(
        "/v1/distributors",
        response_model=Page[DistributorOut],
        summary="The merchant's distributors, newest first (staff)",
        responses=responses(*_AUTH, InvalidCursor),
    )
    async def list_distributors(
        principal: AnyStaff,
        session: SessionDep,
        page: PageDep,
        status_is: Annotated[
            Literal["pending", "active", "suspended", "rejected"] | None, Query(alias="status")
        ] = None,
    ) -> Page[DistributorOut]:
        cols = repo.distributor_columns()
        stmt = scope_to_merchant(repo.distributors_query(), principal, cols.merchant_id)
        if status_is is not None:
            stmt = stmt.where(cols.status == status_is)
        rows, cursor = await fetch_page(
            session, stmt, sort=cols.created_at, key=cols.id, params=page
        )
        found = [DistributorRow(**r._mapping) for r in rows]
        held = await balances_of(session, [d.id for d in found])
        items = [DistributorOut.of(d, held[d.id]) for d in found]
        return Page(items=items, next_cursor=cursor)

    @router.get(
        "/v1/distributors/{distributor_id}",
        response_model=DistributorOut,
        summary="A distributor with their balances (themselves, or their merchant's staff)",
        responses=responses(*_AUTH, DistributorNotFound),
    )
    async def get(
        principal: AnyCaller, distributor_id: uuid.UUID, session: SessionDep
    ) -> DistributorOut:
        return await _out(
            session, await service.visible_distributor(session, principal, distributor_id)
        )

    for action, summary in (
        ("approve", "Approve an application (审核)"),
        ("reject", "Reject an application"),
        ("suspend", "Suspend: nothing new is earned; what was earned stays"),
        ("reinstate", "Reinstate a suspended distributor"),
    ):
        router.add_api_route(
            f"/v1/distributors/{{distributor_id}}/{action}",
            _decision(action),
            methods=["POST"],
            response_model=DistributorOut,
            summary=f"{summary} (staff)",
            responses=responses(*_AUTH, DistributorNotFound, DistributorStateConflict),
            name=f"{action}_distributor",
        )

    @router.put(
        "/v1/distributors/{distributor_id}/payout-account",
        response_model=DistributorOut,
        summary="Set or remove the Stripe connected account withdrawals are transferred to "
        "(the distributor, or money staff)",
        responses=responses(*_AUTH, DistributorNotFound, PayoutAccountInvalid),
    )
    async def put_payout_account(
        principal: PayeeOrMoneyStaff,
        distributor_id: uuid.UUID,
        body: PayoutAccountIn,
        session: SessionDep,
    ) -> DistributorOut:
        row = await service.set_payout_account(
            session, principal, distributor_id, body.payout_account
        )
        return await _out(session, row)

    @router.post(
        "/v1/distributors/{distributor_id}/verify",
        response_model=DistributorOut,
        summary="Record the KYC check (who, when): withdrawals need it (staff)",
        responses=responses(*_AUTH, DistributorNotFound),
    )
    async def verify(
        principal: CatalogStaff, distributor_id: uuid.UUID, session: SessionDep
    ) -> DistributorOut:
        return await _out(session, await service.verify(session, principal, distributor_id))

    return router


def _decision(action: str) -> Callable[..., Awaitable[DistributorOut]]:
    async def endpoint(
        principal: CatalogStaff, distributor_id: uuid.UUID, session: SessionDep
    ) -> DistributorOut:
        return await _out(session, await service.decide(session, principal, distributor_id, action))

    return endpoint
