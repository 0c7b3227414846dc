"""SQL of sessions: families of refresh tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import refresh_token, session_family

t = refresh_token
f = session_family


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_hash: str
    family_id: uuid.UUID
    generation: int
    expires_at: datetime
    used_at: datetime | None
    subject: str
    kind: str
    revoked_at: datetime | None


async def create_family(
    session: AsyncSession, *, family_id: uuid.UUID, subject: str, kind: str
) -> None:
    await session.execute(insert(f).values(id=family_id, subject=subject, kind=kind))


async def insert_token(
    session: AsyncSession,
    *,
    token_hash: str,
    family_id: uuid.UUID,
    generation: int,
    expires_at: datetime,
) -> None:
    await session.execute(
        insert(t).values(
            token_hash=token_hash, family_id=family_id, generation=generation, expires_at=expires_at
        )
    )


async def lock_token(session: AsyncSession, token_hash: str) -> TokenRow | None:
    """The token and its family, both locked: rotations of one family run one at a time."""
    row = (
        await session.execute(
            select(
                t.c.token_hash,
                t.c.family_id,
                t.c.generation,
                t.c.expires_at,
                t.c.used_at,
                f.c.subject,
                f.c.kind,
                f.c.revoked_at,
            )
            .join(f, f.c.id == t.c.family_id)
            .where(t.c.token_hash == token_hash)
            .with_for_update()
        )
    ).one_or_none()
    return TokenRow(**row._mapping) if row is not None else None


async def mark_used(session: AsyncSession, token_hash: str) -> None:
    await session.execute(update(t).where(t.c.token_hash == token_hash).values(used_at=func.now()))


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, reason: str) -> None:
    await session.execute(
        update(f)
        .where(f.c.id == family_id, f.c.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
    )


async def revoke_subject(session: AsyncSession, subject: str, reason: str) -> int:
    result = await session.execute(
        update(f)
        .where(f.c.subject == subject, f.c.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
