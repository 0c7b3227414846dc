"""Merchants (admins onboard them) and their staff (owners manage them); staff sign-in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from gateway.config import GatewaySettings
from gateway.ratelimit import RateLimited, RateLimiter, parse_limit
from gateway.sessions import service as sessions
from gateway.sessions.schemas import TokenPair
from gateway.staff import repository as repo
from gateway.staff import service
from gateway.staff.schemas import (
    AcceptInvitation,
    InvitationOut,
    MerchantCreate,
    MerchantCreated,
    MerchantOut,
    MerchantUpdate,
    RoleChange,
    StaffInvite,
    StaffInvited,
    StaffLogin,
    StaffOut,
)
from gateway.staff.service import (
    InvalidCredentials,
    InvitationInvalid,
    LastOwner,
    LoginTaken,
    MerchantNotFound,
    MerchantRequired,
    MerchantSuspended,
    StaffNotFound,
)
from gateway.store import IdentitySession, IdentityStoreMissing
from shared.auth import CurrentUser, MerchantRoleRequired, RoleRequired
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page

router = APIRouter(tags=["merchants and staff"])
_AUTH = (Unauthorized, Forbidden, MerchantRoleRequired, IdentityStoreMissing)


class LoginThrottled(RateLimited):
    code = "login_throttled"
    title = "Too many failed sign-ins; wait before trying again"


def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def _open(request: Request, session: IdentitySession, staff_id: str) -> TokenPair:
    grant = await service.grant_for(session, staff_id)
    tokens = await sessions.open_session(
        session,
        request.app.state.token_issuer,
        grant,
        refresh_ttl=_settings(request).refresh_token_ttl_seconds,
    )
    return TokenPair.of(tokens)


@router.post(
    "/v1/auth/staff-login",
    response_model=TokenPair,
    tags=["identity"],
    summary="Sign a staff member (or admin) in with their email or phone and password",
    responses=responses(
        InvalidCredentials, LoginThrottled, MerchantSuspended, IdentityStoreMissing
    ),
)
async def staff_login(body: StaffLogin, request: Request, session: IdentitySession) -> TokenPair:
    settings = _settings(request)
    limiter: RateLimiter = request.app.state.rate_limiter
    login = body.login.strip().lower()
    address = request.client.host if request.client else "unknown"
    throttles = (
        (parse_limit(settings.login_failures_per_account), "login-account", login),
        (parse_limit(settings.login_failures_per_address), "login-address", address),
    )
    for item, *keys in throttles:
        wait = await limiter.exhausted(item, *keys)
        if wait is not None:
            raise LoginThrottled(wait)
    try:
        row = await service.authenticate(session, body.login, body.password)
    except InvalidCredentials:
        for item, *keys in throttles:
            await limiter.record(item, *keys)
        raise
    await limiter.forget(throttles[0][0], *throttles[0][1:])
    return await _open(request, session, row.id)


@router.post(
    "/v1/auth/accept-invitation",
    response_model=TokenPair,
    tags=["identity"],
    summary="Set a password with an invitation token, and sign in",
    responses=responses(InvitationInvalid, MerchantSuspended, IdentityStoreMissing),
)
async def accept_invitation(
    body: AcceptInvitation, request: Request, session: IdentitySession
) -> TokenPair:
    row = await service.accept_invitation(session, body.invitation_token, body.password)
    return await _open(request, session, row.id)


@router.post(
    "/v1/merchants",
    status_code=status.HTTP_201_CREATED,
    response_model=MerchantCreated,
    summary="Create a merchant and invite its first owner (admins)",
    responses=responses(*_AUTH, LoginTaken),
)
async def create_merchant(
    body: MerchantCreate, principal: CurrentUser, request: Request, session: IdentitySession
) -> MerchantCreated:
    merchant, invitation = await service.create_merchant(
        session, principal, body, invite_ttl=_settings(request).invitation_ttl_seconds
    )
    return MerchantCreated(
        **MerchantOut.of(merchant).model_dump(), owner_invitation=InvitationOut.of(invitation)
    )


@router.get(
    "/v1/merchants",
    response_model=Page[MerchantOut],
    summary="Every merchant, newest first (admins)",
    responses=responses(*_AUTH, InvalidCursor),
)
async def list_merchants(
    principal: CurrentUser, session: IdentitySession, page: PageDep
) -> Page[MerchantOut]:
    if not principal.is_admin:
        raise RoleRequired("requires the admin role")
    rows, cursor = await fetch_page(
        session, repo.merchants_query(), sort=repo.m.c.created_at, key=repo.m.c.id, params=page
    )
    items = [MerchantOut.of(repo.MerchantRow(**row._mapping)) for row in rows]
    return Page(items=items, next_cursor=cursor)


@router.get(
    "/v1/merchants/{merchant_id}",
    response_model=MerchantOut,
    summary="A merchant (its staff, and admins)",
    responses=responses(*_AUTH, MerchantNotFound),
)
async def get_merchant(
    merchant_id: str, principal: CurrentUser, session: IdentitySession
) -> MerchantOut:
    return MerchantOut.of(await service.get_merchant(session, principal, merchant_id))


@router.patch(
    "/v1/merchants/{merchant_id}",
    response_model=MerchantOut,
    summary="Rename, suspend or reactivate a merchant, or change its contact (admins)",
    responses=responses(*_AUTH, MerchantNotFound),
)
async def update_merchant(
    merchant_id: str, body: MerchantUpdate, principal: CurrentUser, session: IdentitySession
) -> MerchantOut:
    return MerchantOut.of(await service.update_merchant(session, principal, merchant_id, body))


@router.post(
    "/v1/staff",
    status_code=status.HTTP_201_CREATED,
    response_model=StaffInvited,
    summary="Invite a staff member with a role (owners; admins name the merchant)",
    responses=responses(*_AUTH, MerchantNotFound, MerchantRequired, LoginTaken),
)
async def invite_staff(
    body: StaffInvite, principal: CurrentUser, request: Request, session: IdentitySession
) -> StaffInvited:
    row, invitation = await service.invite(
        session, principal, body, invite_ttl=_settings(request).invitation_ttl_seconds
    )
    return StaffInvited(**StaffOut.of(row).model_dump(), invitation=InvitationOut.of(invitation))


@router.get(
    "/v1/staff",
    response_model=Page[StaffOut],
    summary="The merchant's staff, newest first (any of its staff; admins name the merchant)",
    responses=responses(*_AUTH, MerchantNotFound, MerchantRequired, InvalidCursor),
)
async def list_staff(
    principal: CurrentUser,
    session: IdentitySession,
    page: PageDep,
    merchant_id: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[StaffOut]:
    merchant = service.invitation_merchant(principal, merchant_id)
    await service.actor(session, principal, merchant, "owner", "operator", "finance", "viewer")
    stmt = repo.staff_query().where(repo.s.c.merchant_id == merchant)
    rows, cursor = await fetch_page(
        session, stmt, sort=repo.s.c.created_at, key=repo.s.c.id, params=page
    )
    return Page(items=[StaffOut.of(repo.StaffRow(**r._mapping)) for r in rows], next_cursor=cursor)


@router.patch(
    "/v1/staff/{staff_id}",
    response_model=StaffOut,
    summary="Change a staff member's role (owners)",
    responses=responses(*_AUTH, StaffNotFound, LastOwner),
)
async def change_role(
    staff_id: str, body: RoleChange, principal: CurrentUser, session: IdentitySession
) -> StaffOut:
    return StaffOut.of(await service.change_role(session, principal, staff_id, body.role))


@router.delete(
    "/v1/staff/{staff_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a staff member and revoke their sessions (owners)",
    responses=responses(*_AUTH, StaffNotFound, LastOwner),
)
async def remove_staff(staff_id: str, principal: CurrentUser, session: IdentitySession) -> Response:
    await service.remove(session, principal, staff_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
