"""Operator commands that need the databases: migrations, the outbox, scheduled jobs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from qunbuy.pg import ensure_databases, wait_reachable
from qunbuy.platform import Databases, PlatformError, open_databases
from shared.db import make_engine, sessionmaker_for
from shared.events import redrive_dead
from shared.migrations import DATABASES, upgrade
from shared.scheduler import redrive_dead as redrive_dead_jobs
from shared.tables import PlatformTables

# What connecting can fail with: no server, a timeout, or the server refusing us (no such
# role, wrong password, no such database). Anything else during a migration is the
# migration's own failure.
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def prepare_databases(dbs: Databases, services: Sequence[str] = DATABASES) -> None:
    """Create the service databases when we own the server, then migrate them."""
    if dbs.server_url is not None:
        names = [dbs.urls[s].rsplit("/", 1)[-1].split("?", 1)[0] for s in services]
        try:
            asyncio.run(ensure_databases(dbs.server_url, names))
        except _CONNECT_ERRORS as exc:
            raise PlatformError(
                f"cannot use PostgreSQL at the configured URL ({_first_line(exc)}); "
                "check QUNBUY_DATABASE_URL and that the server is running"
            ) from exc
    for service in services:
        try:
            asyncio.run(wait_reachable(dbs.urls[service]))
        except _CONNECT_ERRORS as exc:
            raise PlatformError(
                f"cannot use the {service} database ({_first_line(exc)}); "
                f"check {service.upper()}_DATABASE_URL and that the server is running"
            ) from exc
        try:
            upgrade(service, dbs.urls[service])
        except Exception as exc:
            raise PlatformError(
                f"migrating {service} failed: {type(exc).__name__}: {_first_line(exc)}; "
                f"fix the migration in services/{service}/migrations and run again"
            ) from exc


def migrate(data_dir: Path, service: str | None) -> int:
    services = [service] if service else list(DATABASES)
    dbs = open_databases(data_dir, services)
    try:
        prepare_databases(dbs, services)
    finally:
        dbs.stop()
    print("migrations applied:", service or ", ".join(DATABASES))
    return 0


def _tables(service: str) -> PlatformTables:
    if service == "orders":
        from services.orders.models import platform
    elif service == "crowdfund":
        from services.crowdfund.models import platform
    else:
        from services.referrals.models import platform
    return platform


async def events(args: argparse.Namespace) -> int:
    """``qunbuy events dead|redrive``: the outbox's dead deliveries."""
    return await _dead_letters(args, args.events_command, what="events")


async def jobs(args: argparse.Namespace) -> int:
    """``qunbuy jobs dead|redrive``: scheduled jobs that exhausted their attempts."""
    return await _dead_letters(args, args.jobs_command, what="jobs")


@contextlib.asynccontextmanager
async def _database(args: argparse.Namespace, service: str, what: str) -> AsyncIterator[Any]:
    """An engine on ``service``'s database; operator-friendly errors when it is unusable."""
    dbs = await asyncio.to_thread(open_databases, args.data_dir, [service])
    try:
        await wait_reachable(dbs.urls[service])
    except _CONNECT_ERRORS as exc:
        dbs.stop()
        raise PlatformError(
            f"cannot use the {service} database ({_first_line(exc)}); "
            f"check {service.upper()}_DATABASE_URL"
        ) from exc
    engine = make_engine(dbs.urls[service], pool_size=1)
    try:
        yield engine
    except (OSError, TimeoutError) as exc:
        raise PlatformError(
            f"cannot reach the {service} database ({exc}); check {service.upper()}_DATABASE_URL"
        ) from exc
    except DBAPIError as exc:
        reason = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        raise PlatformError(
            f"the {service} database has no usable {what} table ({reason}); "
            "run `qunbuy migrate` first"
        ) from exc
    finally:
        await engine.dispose()
        dbs.stop()


async def _dead_letters(args: argparse.Namespace, command: str, *, what: str) -> int:
    tables = _tables(args.service)
    async with _database(args, args.service, what) as engine:
        redrive = redrive_dead if what == "events" else redrive_dead_jobs
        if command == "redrive":
            async with sessionmaker_for(engine)() as session, session.begin():
                count = await redrive(session, tables, ids=args.ids or None)
            # Said only once committed: a failed commit must not read as done.
            print(f"re-driven: {count} {'event deliveries' if what == 'events' else 'jobs'}")
            return 0
        t = tables.outbox if what == "events" else tables.scheduled_job
        columns = (
            (t.c.id, t.c.event_type, t.c.subscriber, t.c.attempts, t.c.last_error)
            if what == "events"
            else (t.c.id, t.c.kind, t.c.key, t.c.attempts, t.c.last_error)
        )
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(*columns).where(t.c.status == "dead").order_by(t.c.id))
            ).all()
        for row in rows:
            print("\t".join(str(value) for value in row))
        print(f"dead: {len(rows)}")
        return 0


async def reconcile_ledger(args: argparse.Namespace) -> int:
    """``qunbuy referrals reconcile``: every commission's amount against its ledger entries
    (what was accrued minus what was reversed). Exit 1 when any differ."""
    from services.referrals.commissions.repository import unreconciled

    async with (
        _database(args, "referrals", "ledger") as engine,
        sessionmaker_for(engine)() as session,
    ):
        off = await unreconciled(session)
    for row in off:
        print(f"{row['id']}\tcommission {row['amount']}\tledger {row['ledger']}")
    print(f"commissions that differ from their entries: {len(off)}")
    return 1 if off else 0


async def invite_admin(args: argparse.Namespace) -> int:
    """``qunbuy admin invite``: a platform admin's invitation (the token is printed once)."""
    from gateway.staff import service as staff
    from gateway.staff.schemas import Person

    try:
        person = Person(name=args.name, email=args.email, phone=args.phone)
    except ValidationError as exc:
        raise PlatformError(f"the admin is not valid: {exc.errors()[0]['msg']}") from exc
    async with (
        _database(args, "gateway", "staff") as engine,
        sessionmaker_for(engine)() as session,
        session.begin(),
    ):
        invitation = await staff.invite_admin(
            session, person, invited_by="qunbuy-cli", invite_ttl=args.ttl_hours * 3600
        )
    print(f"admin invited: {invitation.staff_id}")
    print(f"invitation token (accept at POST /v1/auth/accept-invitation): {invitation.token}")
    print(f"expires: {invitation.expires_at.isoformat()}")
    return 0
