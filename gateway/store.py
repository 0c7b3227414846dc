"""The gateway's identity store: one transaction per request, like a service's ``SessionDep``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.errors import DomainError

__all__ = ["IdentitySession", "IdentityStoreMissing", "transaction"]


class IdentityStoreMissing(DomainError):
    status = 503
    code = "identity_store_unavailable"
    title = "This gateway has no identity database configured (DATABASE_URL)"


def _maker(request: Request) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] | None = request.app.state.sessionmaker
    if maker is None:
        raise IdentityStoreMissing()
    return maker


@contextlib.asynccontextmanager
async def transaction(
    request: Request, *, commit_on: tuple[type[Exception], ...] = ()
) -> AsyncIterator[AsyncSession]:
    """A transaction committed when the block ends, and also when it raises one of
    ``commit_on`` (a refusal that must leave a trace, such as a revoked session family)."""
    async with _maker(request)() as session:
        await session.begin()
        try:
            yield session
        except commit_on:
            await session.commit()
            raise
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with transaction(request) as session:
        yield session


# scope="function": committed before the response is sent (as shared.db.SessionDep).
IdentitySession = Annotated[AsyncSession, Depends(_session, scope="function")]
