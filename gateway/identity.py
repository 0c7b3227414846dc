"""Identity the gateway answers itself: JWKS, the development login, /v1/me."""

from __future__ import annotations

import uuid
from typing import Any, Literal, cast

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from gateway.customers import repository as customers
from gateway.sessions.service import SessionRevoked
from gateway.staff import repository as staff
from gateway.store import transaction
from shared.auth import CurrentUser, MerchantRole, Role, TokenIssuer
from shared.errors import NotFound, Unauthorized, responses

router = APIRouter()


class DevLoginDisabled(NotFound):
    code = "dev_login_disabled"
    title = "The development login exists only in the embedded mode"


class DevLogin(BaseModel):
    user_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    roles: list[Role] = Field(default=["customer"], min_length=1)
    merchant_id: str | None = Field(None, min_length=1, max_length=64)
    merchant_role: MerchantRole | None = None

    @model_validator(mode="after")
    def _staff_has_merchant(self) -> DevLogin:
        if "staff" in self.roles and self.merchant_id is None:
            raise ValueError("staff tokens need a merchant_id")
        return self


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    user_id: str


class Me(BaseModel):
    user_id: str
    roles: list[Role]
    merchant_id: str | None
    merchant_role: MerchantRole | None = None
    name: str | None = None
    phone: str | None = None
    # The mini-programs (app ids) a customer has signed in with.
    mini_programs: list[str] = Field(default_factory=list)


@router.get("/.well-known/jwks.json", tags=["identity"], summary="Public keys that sign tokens")
async def jwks(request: Request) -> dict[str, Any]:
    issuer: TokenIssuer = request.app.state.token_issuer
    return issuer.jwks()


@router.post(
    "/v1/auth/dev-login",
    response_model=TokenResponse,
    tags=["identity"],
    summary="Issue a token for any user and roles (embedded development mode only)",
    responses=responses(DevLoginDisabled),
)
async def dev_login(body: DevLogin, request: Request) -> TokenResponse:
    if not request.app.state.settings.dev_login_enabled:
        raise DevLoginDisabled()
    issuer: TokenIssuer = request.app.state.token_issuer
    user_id = body.user_id or f"dev_{uuid.uuid4().hex[:12]}"
    token = issuer.issue(
        user_id, body.roles, merchant_id=body.merchant_id, merchant_role=body.merchant_role
    )
    return TokenResponse(access_token=token, expires_in=issuer.ttl_seconds, user_id=user_id)


@router.get(
    "/v1/me",
    response_model=Me,
    tags=["identity"],
    summary="Who you are: your roles, your merchant and your role there",
    responses=responses(Unauthorized, SessionRevoked),
)
async def me(principal: CurrentUser, request: Request) -> Me:
    out = Me(
        user_id=principal.sub,
        roles=sorted(principal.roles),
        merchant_id=principal.merchant_id,
        merchant_role=principal.merchant_role,
    )
    if request.app.state.sessionmaker is None:
        return out  # a development gateway without an identity store: the token's word
    async with transaction(request) as session:
        customer = await customers.get_customer(session, principal.sub)
        if customer is not None:
            out.phone = customer.phone
            out.mini_programs = await customers.apps_of(session, principal.sub)
        member = await staff.get_staff(session, principal.sub)
        if member is not None:
            if member.status != "active":
                raise SessionRevoked()
            out.name, out.phone = member.name, member.phone
            if member.merchant_id is not None:
                out.merchant_role = cast(MerchantRole, member.role)
    return out
