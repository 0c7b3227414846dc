"""Merchants and their staff: onboarding, invitations, roles, sign-in.

Admins create merchants and invite each one's first owner; owners invite, re-role and remove
staff. The caller's rights are read from the database, not only from their token: a staff
member removed a minute ago cannot act here even with an access token that is still valid.
Removal revokes every session (refresh family) of the removed person.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.sessions import repository as sessions_repo
from gateway.sessions.service import Grant, SessionRevoked
from gateway.staff import repository as repo
from gateway.staff.repository import InvitationRow, MerchantRow, StaffRow
from gateway.staff.schemas import MerchantCreate, MerchantUpdate, Person, StaffInvite
from shared.auth import MerchantRole, MerchantRoleRequired, Principal, RoleRequired
from shared.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized


class MerchantNotFound(NotFound):
    code = "merchant_not_found"
    title = "No such merchant"


class StaffNotFound(NotFound):
    code = "staff_not_found"
    title = "No such staff member"


class MerchantRequired(BadRequest):
    code = "merchant_required"
    title = "Admins name the merchant (merchant_id)"


class MerchantSuspended(Forbidden):
    code = "merchant_suspended"
    title = "The merchant is suspended: its staff cannot sign in"


class LoginTaken(Conflict):
    code = "staff_login_taken"
    title = "Another staff member signs in with this email or phone"


class LastOwner(Conflict):
    code = "last_owner"
    title = "A merchant keeps at least one owner"


class InvitationInvalid(NotFound):
    code = "invitation_invalid"
    title = "The invitation is unknown, expired or already accepted"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "The login or the password is wrong"


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id, the library's (RFC 9106) defaults


@functools.cache
def _decoy() -> str:
    """A hash to verify against when the login is unknown: both answers take as long."""
    return _hasher().hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    # Argon2 is made to be slow (tens of ms of CPU): off the event loop.
    return await asyncio.to_thread(_hasher().hash, password)


async def _verify(encoded: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher().verify(encoded or _decoy(), password) and encoded is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_invitation(ttl_seconds: int) -> tuple[str, dict[str, Any]]:
    token = secrets.token_urlsafe(32)
    return token, {
        "invite_hash": _digest(token),
        "invite_expires_at": datetime.now(UTC) + timedelta(seconds=ttl_seconds),
    }


async def _invite(
    session: AsyncSession,
    *,
    merchant_id: str | None,
    person: Person,
    role: MerchantRole | Literal["admin"],
    invited_by: str,
    ttl_seconds: int,
) -> tuple[StaffRow, InvitationRow]:
    token, invitation = _new_invitation(ttl_seconds)
    try:
        async with session.begin_nested():
            row = await repo.insert_staff(
                session,
                id=f"stf_{uuid.uuid4().hex}",
                merchant_id=merchant_id,
                role=role,
                name=person.name,
                email=person.email,
                phone=person.phone,
                invited_by=invited_by,
                **invitation,
            )
    except IntegrityError as exc:
        raise LoginTaken() from exc
    return row, InvitationRow(row.id, token, invitation["invite_expires_at"])


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise RoleRequired("requires the admin role")


async def actor(
    session: AsyncSession, principal: Principal, merchant_id: str, *roles: MerchantRole
) -> None:
    """Admins act for every merchant; staff for their own, holding one of ``roles`` now.

    A staff member's row decides (their current role, not the token's); tokens that no row
    backs (the development login) are taken at their word."""
    if principal.is_admin:
        return
    if not principal.has("staff"):
        raise RoleRequired("requires the staff role")
    row = await repo.get_staff(session, principal.sub)
    if row is not None and row.status != "active":
        raise SessionRevoked()
    merchant = row.merchant_id if row is not None else principal.merchant_id
    role = row.role if row is not None else principal.merchant_role
    if merchant != merchant_id:
        raise MerchantNotFound()  # another merchant's: as if it did not exist
    if role is not None and role not in roles:
        raise MerchantRoleRequired(f"requires one of: {', '.join(roles)}")


async def create_merchant(
    session: AsyncSession, principal: Principal, body: MerchantCreate, *, invite_ttl: int
) -> tuple[MerchantRow, InvitationRow]:
    _require_admin(principal)
    merchant = await repo.insert_merchant(
        session,
        id=f"mer_{uuid.uuid4().hex}",
        name=body.name,
        contact_name=body.contact_name,
        contact_email=body.contact_email,
        contact_phone=body.contact_phone,
        created_by=principal.sub,
    )
    _, invitation = await _invite(
        session,
        merchant_id=merchant.id,
        person=body.owner,
        role="owner",
        invited_by=principal.sub,
        ttl_seconds=invite_ttl,
    )
    return merchant, invitation


async def get_merchant(
    session: AsyncSession, principal: Principal, merchant_id: str
) -> MerchantRow:
    await actor(session, principal, merchant_id, "owner", "operator", "finance", "viewer")
    found = await repo.get_merchant(session, merchant_id)
    if found is None:
        raise MerchantNotFound()
    return found


async def update_merchant(
    session: AsyncSession, principal: Principal, merchant_id: str, body: MerchantUpdate
) -> MerchantRow:
    _require_admin(principal)
    changes = body.model_dump(exclude_unset=True)
    found = (
        await repo.update_merchant(session, merchant_id, **changes)
        if changes
        else await repo.get_merchant(session, merchant_id)
    )
    if found is None:
        raise MerchantNotFound()
    return found


def invitation_merchant(principal: Principal, requested: str | None) -> str:
    if requested is not None:
        return requested
    if principal.is_admin or principal.merchant_id is None:
        raise MerchantRequired()
    return principal.merchant_id


async def invite(
    session: AsyncSession, principal: Principal, body: StaffInvite, *, invite_ttl: int
) -> tuple[StaffRow, InvitationRow]:
    merchant_id = invitation_merchant(principal, body.merchant_id)
    await actor(session, principal, merchant_id, "owner")
    merchant = await repo.get_merchant(session, merchant_id)
    if merchant is None:
        raise MerchantNotFound()
    return await _invite(
        session,
        merchant_id=merchant_id,
        person=body,
        role=body.role,
        invited_by=principal.sub,
        ttl_seconds=invite_ttl,
    )


async def invite_admin(
    session: AsyncSession, person: Person, *, invited_by: str, invite_ttl: int
) -> InvitationRow:
    """A platform admin, invited (``qunbuy admin invite``: the first admin has no one above)."""
    _, invitation = await _invite(
        session,
        merchant_id=None,
        person=person,
        role="admin",
        invited_by=invited_by,
        ttl_seconds=invite_ttl,
    )
    return invitation


async def _member(session: AsyncSession, principal: Principal, staff_id: str) -> StaffRow:
    """A staff member the caller (an owner of their merchant, or an admin) manages, locked.

    The merchant's row is locked first: changes of one merchant's staff run one after the
    other, and the caller's own role is read after the lock (two owners demoting each other
    at once: the second finds it is no longer an owner)."""
    found = await repo.get_staff(session, staff_id)
    if found is None or found.merchant_id is None:
        raise StaffNotFound()
    await repo.lock_merchant(session, found.merchant_id)
    row = await repo.get_staff(session, staff_id, for_update=True)
    if row is None or row.merchant_id is None or row.status == "removed":
        raise StaffNotFound()
    try:
        await actor(session, principal, row.merchant_id, "owner")
    except MerchantNotFound as exc:
        raise StaffNotFound() from exc
    return row


async def _keep_an_owner(session: AsyncSession, row: StaffRow) -> None:
    assert row.merchant_id is not None
    owners = await repo.lock_owners(session, row.merchant_id)
    if owners == [row.id]:
        raise LastOwner()


async def change_role(
    session: AsyncSession, principal: Principal, staff_id: str, role: MerchantRole
) -> StaffRow:
    row = await _member(session, principal, staff_id)
    if row.role == "owner" and role != "owner":
        await _keep_an_owner(session, row)
    return await repo.update_staff(session, staff_id, role=role)


async def remove(session: AsyncSession, principal: Principal, staff_id: str) -> None:
    row = await _member(session, principal, staff_id)
    if row.role == "owner":
        await _keep_an_owner(session, row)
    await repo.update_staff(
        session, staff_id, status="removed", removed_at=datetime.now(UTC), invite_hash=None
    )
    await sessions_repo.revoke_subject(session, staff_id, "removed")


async def accept_invitation(session: AsyncSession, token: str, password: str) -> StaffRow:
    row = await repo.staff_by_invitation(session, _digest(token))
    if row is None:
        raise InvitationInvalid()
    return await repo.update_staff(
        session,
        row.id,
        status="active",
        password_hash=await hash_password(password),
        invite_hash=None,
        invite_expires_at=None,
    )


async def authenticate(session: AsyncSession, login: str, password: str) -> StaffRow:
    """The active staff member with this login and password; InvalidCredentials otherwise
    (the same answer, in the same time, for an unknown login and a wrong password)."""
    email, phone = (login.strip().lower(), None) if "@" in login else (None, login)
    row = await repo.staff_by_login(session, email=email, phone=phone)
    hashed = row.password_hash if row is not None and row.status == "active" else None
    if not await _verify(hashed, password) or row is None:
        raise InvalidCredentials()
    if _hasher().check_needs_rehash(cast(str, hashed)):
        await repo.update_staff(session, row.id, password_hash=await hash_password(password))
    return row


async def grant_for(session: AsyncSession, staff_id: str) -> Grant:
    """What a staff member's (or admin's) access tokens say, from their row as it is now."""
    row = await repo.get_staff(session, staff_id)
    if row is None or row.status != "active":
        raise SessionRevoked()
    if row.merchant_id is None:
        return Grant(subject=row.id, kind="staff", roles=["admin"])
    merchant = await repo.get_merchant(session, row.merchant_id)
    if merchant is None or merchant.status != "active":
        raise MerchantSuspended()
    return Grant(
        subject=row.id,
        kind="staff",
        roles=["staff"],
        merchant_id=row.merchant_id,
        merchant_role=cast(MerchantRole, row.role),
    )
