"""Refresh and logout: the tokens of every kind of login."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from gateway.config import GatewaySettings
from gateway.sessions import service
from gateway.sessions.schemas import RefreshIn, TokenPair
from gateway.sessions.service import (
    RefreshTokenExpired,
    RefreshTokenInvalid,
    RefreshTokenReused,
    SessionRevoked,
)
from gateway.store import IdentitySession, IdentityStoreMissing, transaction
from shared.errors import responses

router = APIRouter(prefix="/v1/auth", tags=["identity"])


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Exchange a refresh token for new tokens (it works once; reuse revokes the login)",
    responses=responses(
        RefreshTokenInvalid,
        RefreshTokenExpired,
        RefreshTokenReused,
        SessionRevoked,
        IdentityStoreMissing,
    ),
)
async def refresh(body: RefreshIn, request: Request) -> TokenPair:
    settings: GatewaySettings = request.app.state.settings
    # Reuse revokes the family and is refused: that revocation must be committed.
    async with transaction(request, commit_on=(RefreshTokenReused,)) as session:
        tokens = await service.refresh(
            session,
            request.app.state.token_issuer,
            body.refresh_token,
            refresh_ttl=settings.refresh_token_ttl_seconds,
        )
    return TokenPair.of(tokens)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke the login a refresh token belongs to (its access tokens run out alone)",
    responses=responses(IdentityStoreMissing),
)
async def logout(body: RefreshIn, session: IdentitySession) -> Response:
    await service.logout(session, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
