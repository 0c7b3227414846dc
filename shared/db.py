"""Async database access: one engine per process, one session (one transaction) per request.

The request's session is opened by :func:`session_dependency` and committed once when the
endpoint returns; any exception rolls everything back, events it meant to publish included.
Services never call ``commit()``; they ``flush()`` when they need an id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import MetaData
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import registry

__all__ = [
    "NAMING_CONVENTION",
    "SessionDep",
    "autocommit_engine_for",
    "make_engine",
    "make_registry",
    "session_dependency",
    "to_async_url",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_registry() -> registry:
    """A SQLAlchemy registry with its own metadata: one per service, one database each."""
    return registry(metadata=MetaData(naming_convention=NAMING_CONVENTION))


def to_async_url(url: str) -> str:
    """Accept ``postgresql://`` URLs (what operators write) and use the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def make_engine(
    url: str, *, pool_size: int = 20, pre_ping: bool = False, pool_timeout: float = 30.0
) -> AsyncEngine:
    """An engine and its pool of at most ``pool_size`` connections, all kept once opened.

    No overflow: connections opened above the pool's size are closed as soon as they are
    returned, so under a burst between the two sizes the pool opened and closed connections
    all the time (a TLS attempt, a PostgreSQL backend and asyncpg's setup each; a tenth of
    the orders service's CPU in a rush, docs/benchmarks.md). A burst waits for a pooled
    connection instead, up to ``pool_timeout``.

    No ping before each checkout by default: it is a round trip and a good part of the CPU
    of every transaction on the hot paths. A connection the server has dropped (a restart, a
    failover) fails its first statement instead; SQLAlchemy then invalidates the whole pool,
    and that one request is answered 503 ``database_unavailable`` (a retry with its
    Idempotency-Key is safe). ``pre_ping`` is for the few connections that must not fail
    that way (the readiness probe, LISTEN)."""
    return create_async_engine(
        to_async_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
    )


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def autocommit_engine_for(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, each statement committing on its own (no BEGIN/COMMIT round trips), for
    work that is a single statement: run on a connection, without a session around it."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def session_dependency(request: Request) -> AsyncIterator[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session, session.begin():
        yield session


# scope="function": the commit runs before the response is sent, so a failed commit is
# reported as a failure instead of after a 2xx already went out.
SessionDep = Annotated[AsyncSession, Depends(session_dependency, scope="function")]
