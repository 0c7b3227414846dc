"""Scheduled work: a domain asks for something to run at a time (a campaign's close, an
order's expiry, a group's deadline, a pledge's charge), and exactly one worker runs it.

- :func:`schedule` writes the job in the caller's transaction: it exists only if the caller
  commits. One job per (kind, key): scheduling it again moves its time (and payload) while it
  is pending, and does nothing once it ran. :func:`cancel` withdraws a pending job.
- :class:`JobRunner` (the worker loop runs it) claims due jobs with ``FOR UPDATE SKIP
  LOCKED`` and a lease, so any number of workers share them; it runs each job's handler in a
  transaction that also marks the job done, so the job's effect and its completion commit
  together. A worker that dies mid-job stops holding it when the lease runs out, and another
  runs it again: handlers must be idempotent, as the outbox's are.
- A handler that raises is retried with exponential backoff and marked ``dead`` after
  ``max_attempts``, with its last error kept (``qunbuy``'s operators re-drive like events).
- Wake-up: scheduling NOTIFYs the workers (shared/wakeup.py), and an idle worker sleeps until
  the next job is due, so a job runs within a second or so of its time.

Why not a job library: the PostgreSQL-based ones (procrastinate, pgqueuer) bring their own
schema, migrations and connections, while we need the enqueue to join the caller's
SQLAlchemy transaction in each service's own Alembic-managed database; the part we need is
this module's ~200 lines on the same claim-and-lease pattern as the outbox relay.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.tables import PlatformTables
from shared.wakeup import notify_work

__all__ = [
    "Detached",
    "Job",
    "JobHandler",
    "JobPolicy",
    "JobRunner",
    "cancel",
    "redrive_dead",
    "schedule",
    "schedule_many",
]

_log = structlog.get_logger("qunbuy.scheduler")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    key: str
    run_at: datetime
    payload: dict[str, Any]
    attempts: int


JobHandler = Callable[[AsyncSession, Job], Awaitable[None]]


@dataclass(frozen=True)
class Detached:
    """A handler that runs outside any transaction: work that waits on someone else (a
    payment provider's refund) must not hold a connection or a lock meanwhile. The lease
    keeps other workers off while it runs; the job is marked done after it returns. Like
    every handler it must be idempotent: a lease that runs out lets another worker start it
    again (provider idempotency keys make that safe)."""

    run: Callable[[Job], Awaitable[None]]


@dataclass(frozen=True)
class JobPolicy:
    lease: timedelta = timedelta(seconds=60)
    max_attempts: int = 10
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 600.0
    batch_size: int = 20

    def backoff(self, attempts: int) -> timedelta:
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempts - 1))
        return timedelta(seconds=delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter


async def schedule(
    session: AsyncSession,
    tables: PlatformTables,
    *,
    kind: str,
    key: str,
    run_at: datetime,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Runs ``kind`` for ``key`` at ``run_at`` once the caller's transaction commits."""
    if run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    t = tables.scheduled_job
    stmt = insert(t).values(kind=kind, key=key, run_at=run_at, payload=dict(payload or {}))
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.kind, t.c.key],
            set_={"run_at": stmt.excluded.run_at, "payload": stmt.excluded.payload},
            where=t.c.status == "pending",
        )
    )
    await notify_work(session)


async def schedule_many(
    session: AsyncSession,
    tables: PlatformTables,
    *,
    kind: str,
    runs: Sequence[tuple[str, datetime]],
) -> None:
    """:func:`schedule` for several keys (each once) in one statement: ``(key, run_at)``."""
    if not runs:
        return
    if any(run_at.tzinfo is None for _, run_at in runs):
        raise ValueError("run_at must be timezone-aware")
    t = tables.scheduled_job.name
    # unnest, not a VALUES list: one statement text for any number of rows (compiled once).
    await session.execute(
        text(
            f"INSERT INTO {t} (kind, key, run_at, payload)"  # noqa: S608 - our table's name
            " SELECT :kind, k, r, CAST('{}' AS jsonb)"
            " FROM unnest(CAST(:keys AS text[]), CAST(:run_ats AS timestamptz[])) AS u(k, r)"
            " ON CONFLICT (kind, key) DO UPDATE SET run_at = excluded.run_at,"
            f" payload = excluded.payload WHERE {t}.status = 'pending'"
        ),
        {"kind": kind, "keys": [k for k, _ in runs], "run_ats": [r for _, r in runs]},
    )
    await notify_work(session)


async def cancel(session: AsyncSession, tables: PlatformTables, *, kind: str, key: str) -> bool:
    """Withdraws a pending job; False when there was none (it ran, or never existed)."""
    t = tables.scheduled_job
    result = await session.execute(
        update(t)
        .where(t.c.kind == kind, t.c.key == key, t.c.status == "pending")
        .values(status="cancelled", finished_at=func.now())
        .returning(t.c.id)
    )
    return result.first() is not None


async def redrive_dead(
    session: AsyncSession, tables: PlatformTables, *, ids: list[int] | None = None
) -> int:
    """Dead jobs (all, or those ``ids``) back to pending, due now; returns how many."""
    t = tables.scheduled_job
    stmt = (
        update(t)
        .where(t.c.status == "dead")
        .values(status="pending", attempts=0, run_at=func.now(), locked_until=None)
    )
    if ids:
        stmt = stmt.where(t.c.id.in_(ids))
    return len((await session.execute(stmt.returning(t.c.id))).all())


class JobRunner:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        tables: PlatformTables,
        handlers: Mapping[str, JobHandler | Detached],
        policy: JobPolicy | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.table = tables.scheduled_job
        self.handlers = handlers
        self.policy = policy or JobPolicy()

    def _free(self) -> Any:
        t = self.table
        return or_(t.c.locked_until.is_(None), t.c.locked_until <= func.now())

    async def claim(self) -> list[Job]:
        """Due jobs nobody holds, leased to this worker (committed before any runs)."""
        t = self.table
        async with self.sessionmaker() as session, session.begin():
            due = (
                select(t.c.id)
                .where(t.c.status == "pending", t.c.run_at <= func.now(), self._free())
                .order_by(t.c.run_at, t.c.id)
                .limit(self.policy.batch_size)
                .with_for_update(skip_locked=True)
            )
            rows = await session.execute(
                update(t)
                .where(t.c.id.in_(due.scalar_subquery()))
                .values(locked_until=func.now() + self.policy.lease, attempts=t.c.attempts + 1)
                .returning(t.c.id, t.c.kind, t.c.key, t.c.run_at, t.c.payload, t.c.attempts)
            )
            return [Job(**r._mapping) for r in rows]

    async def run_due(self) -> int:
        """Claims and runs what is due now; returns how many jobs it ran (or tried)."""
        jobs = await self.claim()
        for job in jobs:
            await self._run(job)
        return len(jobs)

    async def _run(self, job: Job) -> None:
        t = self.table
        mine = and_(t.c.id == job.id, t.c.status == "pending", t.c.attempts == job.attempts)
        done = {"status": "done", "finished_at": func.now(), "locked_until": None}
        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise LookupError(f"no handler for jobs of kind {job.kind!r}")
            if isinstance(handler, Detached):
                async with self.sessionmaker() as session, session.begin():
                    if await session.scalar(select(t.c.id).where(mine)) is None:
                        return  # cancelled, or taken over after our lease ran out
                await handler.run(job)
                async with self.sessionmaker() as session, session.begin():
                    await session.execute(update(t).where(mine).values(**done))
                return
            async with self.sessionmaker() as session, session.begin():
                held = await session.scalar(select(t.c.id).where(mine).with_for_update())
                if held is None:
                    return  # cancelled, or taken over after our lease ran out
                await handler(session, job)
                await session.execute(update(t).where(t.c.id == job.id).values(**done))
        except Exception as exc:
            error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
            values: dict[str, Any] = {"locked_until": None, "last_error": error}
            if job.attempts >= self.policy.max_attempts:
                values.update(status="dead", finished_at=func.now())
                _log.warning("job_dead", job_id=job.id, kind=job.kind, error=error)
            else:
                values["run_at"] = func.now() + self.policy.backoff(job.attempts)
                _log.warning("job_failed", job_id=job.id, kind=job.kind, error=error)
            async with self.sessionmaker() as session, session.begin():
                await session.execute(update(t).where(mine).values(**values))

    async def next_due_in(self) -> float | None:
        """Seconds until a pending job can next be claimed (its time, or its lease's end)."""
        t = self.table
        async with self.sessionmaker() as session:
            seconds = await session.scalar(
                select(
                    func.extract(
                        "epoch",
                        func.min(
                            func.greatest(t.c.run_at, func.coalesce(t.c.locked_until, t.c.run_at))
                        )
                        - func.now(),
                    )
                ).where(t.c.status == "pending")
            )
        return None if seconds is None else max(0.0, float(seconds))
