"""Sessions: an access token and a rotating refresh token per login.

A login opens a *family*; every refresh exchanges the presented token for the next one of the
family. A token presented a second time (stolen, or replayed) revokes its whole family: the
thief and the owner both have to sign in again. Logout revokes the family too.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.customers import repository as customers
from gateway.sessions import repository as repo
from shared.auth import MerchantRole, Role, TokenIssuer
from shared.errors import Unauthorized

__all__ = [
    "Grant",
    "RefreshTokenExpired",
    "RefreshTokenInvalid",
    "RefreshTokenReused",
    "SessionRevoked",
    "Tokens",
    "logout",
    "open_session",
    "refresh",
    "revoke_all",
]

Kind = Literal["customer", "staff"]


class RefreshTokenInvalid(Unauthorized):
    code = "refresh_token_invalid"
    title = "The refresh token is not valid"


class RefreshTokenExpired(Unauthorized):
    code = "refresh_token_expired"
    title = "The refresh token has expired; sign in again"


class RefreshTokenReused(Unauthorized):
    code = "refresh_token_reused"
    title = "The refresh token was already used: every session of this login is now revoked"


class SessionRevoked(Unauthorized):
    code = "session_revoked"
    title = "This session was revoked (logout, reuse, or removal); sign in again"


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a session is for, and what its access tokens say."""

    subject: str
    kind: Kind
    roles: list[Role] = field(default_factory=lambda: ["customer"])
    merchant_id: str | None = None
    merchant_role: MerchantRole | None = None


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user_id: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _issue(
    session: AsyncSession,
    issuer: TokenIssuer,
    grant: Grant,
    *,
    family_id: uuid.UUID,
    generation: int,
    refresh_ttl: int,
) -> Tokens:
    token = secrets.token_urlsafe(32)
    await repo.insert_token(
        session,
        token_hash=_hash(token),
        family_id=family_id,
        generation=generation,
        expires_at=datetime.now(UTC) + timedelta(seconds=refresh_ttl),
    )
    access = issuer.issue(
        grant.subject,
        grant.roles,
        merchant_id=grant.merchant_id,
        merchant_role=grant.merchant_role,
    )
    return Tokens(
        access_token=access,
        expires_in=issuer.ttl_seconds,
        refresh_token=token,
        refresh_expires_in=refresh_ttl,
        user_id=grant.subject,
    )


async def open_session(
    session: AsyncSession, issuer: TokenIssuer, grant: Grant, *, refresh_ttl: int
) -> Tokens:
    family_id = uuid.uuid4()
    await repo.create_family(session, family_id=family_id, subject=grant.subject, kind=grant.kind)
    return await _issue(
        session, issuer, grant, family_id=family_id, generation=1, refresh_ttl=refresh_ttl
    )


async def _grant(session: AsyncSession, subject: str, kind: str) -> Grant:
    """What the subject's access tokens say now (a staff member's role may have changed)."""
    if kind == "staff":
        # Imported here: the staff domain builds on this one (Grant, SessionRevoked).
        from gateway.staff import service as staff_service

        return await staff_service.grant_for(session, subject)
    if await customers.get_customer(session, subject) is None:
        raise SessionRevoked()
    return Grant(subject=subject, kind="customer")


async def refresh(
    session: AsyncSession, issuer: TokenIssuer, token: str, *, refresh_ttl: int
) -> Tokens:
    """The next tokens of the family. Raises RefreshTokenReused after revoking the family:
    the caller commits on it (``transaction(commit_on=...)``)."""
    row = await repo.lock_token(session, _hash(token))
    if row is None:
        raise RefreshTokenInvalid()
    if row.revoked_at is not None:
        raise SessionRevoked()
    if row.used_at is not None:
        await repo.revoke_family(session, row.family_id, "reuse")
        raise RefreshTokenReused()
    if row.expires_at <= datetime.now(UTC):
        raise RefreshTokenExpired()
    grant = await _grant(session, row.subject, row.kind)
    await repo.mark_used(session, row.token_hash)
    return await _issue(
        session,
        issuer,
        grant,
        family_id=row.family_id,
        generation=row.generation + 1,
        refresh_ttl=refresh_ttl,
    )


async def logout(session: AsyncSession, token: str) -> None:
    """Revokes the token's family. An unknown or already revoked token is no error: the
    caller is signed out either way."""
    row = await repo.lock_token(session, _hash(token))
    if row is not None:
        await repo.revoke_family(session, row.family_id, "logout")


async def revoke_all(session: AsyncSession, subject: str, reason: str) -> int:
    return await repo.revoke_subject(session, subject, reason)
