"""Scheduled work on real PostgreSQL: once per job across concurrent workers, only after the
caller commits, retried after a crashed claim's lease, on time, with backoff, dead letters,
cancel and reschedule."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.referrals.config import ReferralsSettings
from services.referrals.models import platform
from shared.app import ServiceSpec, create_service_app
from shared.db import make_engine, sessionmaker_for
from shared.scheduler import Job, JobPolicy, JobRunner, cancel, redrive_dead, schedule
from tests.conftest import migrated_databases, running

FAST = JobPolicy(
    lease=timedelta(milliseconds=500), max_attempts=3, backoff_base_seconds=0.05, batch_size=5
)


@pytest.fixture(scope="module")
def job_db(pg_server_url: str, worker_id_safe: str) -> Iterator[dict[str, str]]:
    with migrated_databases(pg_server_url, f"qbj_{worker_id_safe}") as urls:
        yield urls


@pytest.fixture
async def maker(job_db: dict[str, str]) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine: AsyncEngine = make_engine(job_db["referrals"], pool_size=5)
    try:
        yield sessionmaker_for(engine)
    finally:
        await engine.dispose()


def now() -> datetime:
    return datetime.now(UTC)


async def add(
    maker: async_sessionmaker[AsyncSession], kind: str, keys: list[str], at: datetime | None = None
) -> None:
    async with maker() as session, session.begin():
        for key in keys:
            await schedule(session, platform, kind=kind, key=key, run_at=at or now())


async def status_of(maker: async_sessionmaker[AsyncSession], kind: str, key: str) -> str | None:
    t = platform.scheduled_job
    async with maker() as session:
        return await session.scalar(select(t.c.status).where(t.c.kind == kind, t.c.key == key))


async def test_concurrent_workers_run_each_job_exactly_once(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    kind = f"test.once.{uuid.uuid4().hex[:6]}"
    keys = [f"k{i}" for i in range(60)]
    await add(maker, kind, keys)
    ran: Counter[str] = Counter()

    async def handler(session: AsyncSession, job: Job) -> None:
        ran[job.key] += 1
        await asyncio.sleep(0.01)  # let the workers interleave

    runners = [
        JobRunner(sessionmaker=maker, tables=platform, handlers={kind: handler}, policy=FAST)
        for _ in range(4)
    ]

    async def drain(runner: JobRunner) -> None:
        while await runner.run_due():
            pass

    await asyncio.gather(*(drain(r) for r in runners))
    assert ran == Counter(dict.fromkeys(keys, 1))
    assert {await status_of(maker, kind, k) for k in keys} == {"done"}


async def test_a_job_scheduled_in_a_rolled_back_transaction_never_exists(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    kind = f"test.rollback.{uuid.uuid4().hex[:6]}"
    async with maker() as session, session.begin():
        await schedule(session, platform, kind=kind, key="k", run_at=now())
        await session.rollback()
    assert await status_of(maker, kind, "k") is None


async def test_a_crashed_claim_is_run_again_after_its_lease(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    kind = f"test.crash.{uuid.uuid4().hex[:6]}"
    await add(maker, kind, ["k"])
    ran: list[int] = []

    async def handler(session: AsyncSession, job: Job) -> None:
        ran.append(job.attempts)

    runner = JobRunner(sessionmaker=maker, tables=platform, handlers={kind: handler}, policy=FAST)
    claimed = await runner.claim()  # ... and the worker dies before running it
    assert [j.key for j in claimed if j.kind == kind] == ["k"]
    assert await runner.run_due() == 0  # still leased
    await asyncio.sleep(0.6)
    assert await runner.run_due() >= 1
    assert ran == [2]
    assert await status_of(maker, kind, "k") == "done"


async def test_failures_back_off_then_die_and_can_be_redriven(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    kind = f"test.fail.{uuid.uuid4().hex[:6]}"
    await add(maker, kind, ["k"])
    fail = True

    async def handler(session: AsyncSession, job: Job) -> None:
        if fail:
            raise RuntimeError("not yet")

    runner = JobRunner(sessionmaker=maker, tables=platform, handlers={kind: handler}, policy=FAST)
    deadline = time.monotonic() + 10
    while await status_of(maker, kind, "k") != "dead" and time.monotonic() < deadline:
        await runner.run_due()
        await asyncio.sleep(0.05)
    t = platform.scheduled_job
    async with maker() as session:
        row = (await session.execute(select(t).where(t.c.kind == kind))).one()
    assert row.status == "dead"
    assert row.attempts == FAST.max_attempts
    assert "not yet" in row.last_error

    fail = False
    async with maker() as session, session.begin():
        assert await redrive_dead(session, platform, ids=[row.id]) == 1
    await runner.run_due()
    assert await status_of(maker, kind, "k") == "done"


async def test_cancel_and_reschedule(maker: async_sessionmaker[AsyncSession]) -> None:
    kind = f"test.move.{uuid.uuid4().hex[:6]}"
    later = now() + timedelta(hours=1)
    await add(maker, kind, ["moved", "cancelled"], at=later)
    ran: list[str] = []

    async def handler(session: AsyncSession, job: Job) -> None:
        ran.append(job.key)

    runner = JobRunner(sessionmaker=maker, tables=platform, handlers={kind: handler}, policy=FAST)
    await runner.run_due()
    assert ran == []
    await add(maker, kind, ["moved"])  # scheduled again: now
    async with maker() as session, session.begin():
        assert await cancel(session, platform, kind=kind, key="cancelled") is True
        assert await cancel(session, platform, kind=kind, key="never") is False
    while await runner.run_due():
        pass
    assert ran == ["moved"]
    await add(maker, kind, ["moved"])  # once it ran, scheduling again does nothing
    assert await runner.run_due() == 0
    assert await status_of(maker, kind, "cancelled") == "cancelled"


async def test_the_worker_runs_a_job_on_time_without_polling(
    service_env: Callable[..., dict[str, str]], job_db: dict[str, str]
) -> None:
    ran = asyncio.Event()
    ran_at: list[float] = []

    async def handler(session: AsyncSession, job: Job) -> None:
        ran_at.append(time.monotonic())
        ran.set()

    kind = f"test.ontime.{uuid.uuid4().hex[:6]}"
    env = service_env(
        "referrals",
        DATABASE_URL=job_db["referrals"],
        WORKER_ENABLED="true",
        WORKER_POLL_SECONDS="30",
    )
    spec = ServiceSpec(name="referrals", title="t", tables=platform, jobs={kind: handler})
    app = create_service_app(spec, ReferralsSettings.model_validate(env))
    async with running(app):
        await asyncio.wait_for(app.state.work_signal.connected.wait(), 10)
        due = time.monotonic() + 1.0
        await add(app.state.sessionmaker, kind, ["k"], at=now() + timedelta(seconds=1))
        await asyncio.wait_for(ran.wait(), 10)
    assert -0.1 <= ran_at[0] - due < 1.5
