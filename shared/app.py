"""The FastAPI app every service is made of: middleware, errors, health, metrics, worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from shared.auth import TokenVerifier
from shared.db import autocommit_engine_for, make_engine, sessionmaker_for
from shared.errors import install_error_handlers, problem_response
from shared.events import EventHandlers, OutboxRelay, inbox_router
from shared.events._relay import RelayPolicy
from shared.idempotency import IdempotencyMiddleware, PreClaim, purge_expired
from shared.limits import RequestLimitsMiddleware
from shared.observability import RequestContextMiddleware, configure_logging, metrics_endpoint
from shared.openapi import install_openapi
from shared.scheduler import Detached, JobHandler, JobRunner
from shared.settings import ServiceSettings
from shared.tables import PlatformTables
from shared.wakeup import WorkSignal, wait_for_work

__all__ = ["ServiceSpec", "create_service_app"]

_log = structlog.get_logger("qunbuy.worker")
Startup = Callable[[FastAPI], Awaitable[None]]


@dataclass
class ServiceSpec:
    name: str
    title: str
    tables: PlatformTables
    routers: Sequence[APIRouter] = ()
    event_handlers: EventHandlers = field(default_factory=EventHandlers)
    # Extra work for the worker loop: each job returns how many seconds until it wants to run
    # again (None: no opinion); it also runs whenever a NOTIFY wakes the worker.
    periodic: Sequence[Callable[[FastAPI], Awaitable[float | None]]] = ()
    # Scheduled work (shared/scheduler.py): a handler per job kind.
    jobs: Mapping[str, JobHandler | Detached] = field(default_factory=dict)
    on_startup: Sequence[Startup] = ()
    on_shutdown: Sequence[Startup] = ()
    # Refusals the idempotency middleware may give before claiming a key (shared/idempotency).
    prechecks: Sequence[PreClaim] = ()


def _relay_for(app: FastAPI) -> OutboxRelay:
    settings: ServiceSettings = app.state.settings
    return OutboxRelay(
        sessionmaker=app.state.sessionmaker,
        tables=app.state.tables,
        subscribers=settings.subscribers(),
        secret=settings.event_secret,
        policy=RelayPolicy(
            max_attempts=settings.event_max_attempts,
            backoff_base_seconds=settings.event_backoff_base_seconds,
            backoff_max_seconds=settings.event_backoff_max_seconds,
            max_events_per_post=settings.event_max_events_per_post,
        ),
    )


_PURGE_EVERY = 600.0


async def purge_idempotency_keys(app: FastAPI) -> float:
    """Expired keys (older than 24 hours) are deleted every 10 minutes."""
    now = time.monotonic()
    last = getattr(app.state, "last_key_purge", float("-inf"))
    if now - last < _PURGE_EVERY:
        return _PURGE_EVERY - (now - last)
    app.state.last_key_purge = now
    async with app.state.sessionmaker() as session, session.begin():
        await purge_expired(session, app.state.tables)
    return _PURGE_EVERY


async def _worker(app: FastAPI, spec: ServiceSpec, signal: WorkSignal, stop: asyncio.Event) -> None:
    settings: ServiceSettings = app.state.settings
    relay = _relay_for(app)
    runner = JobRunner(
        sessionmaker=app.state.sessionmaker,
        tables=app.state.tables,
        handlers=app.state.job_handlers,
    )

    async def run_scheduled_jobs(_: FastAPI) -> float | None:
        while await runner.run_due():
            pass
        return await runner.next_due_in()

    jobs = [purge_idempotency_keys, run_scheduled_jobs, *spec.periodic]
    relay_wake, jobs_wake = signal.waiter(), signal.waiter()

    async def periodic_loop() -> None:
        while not stop.is_set():
            delay = settings.worker_poll_seconds
            for job in jobs:
                try:
                    due = await job(app)
                except Exception:
                    _log.exception("periodic_job_failed", job=getattr(job, "__name__", "?"))
                    due = None
                if due is not None:
                    delay = min(delay, due)
            await wait_for_work(jobs_wake, stop, delay)

    await asyncio.gather(
        signal.run(stop),
        relay.run_forever(stop, settings.worker_poll_seconds, relay_wake),
        periodic_loop(),
    )


def create_service_app(spec: ServiceSpec, settings: ServiceSettings) -> FastAPI:
    configure_logging(spec.name, settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        app.state.engine = engine
        # Readiness asks whether the database answers, not whether the request pool has a
        # connection free: under a burst the pool queues, and the pod must not leave rotation.
        probe_engine = make_engine(settings.database_url, pool_size=2, pre_ping=True)
        app.state.probe_engine = probe_engine
        app.state.sessionmaker = sessionmaker_for(engine)
        app.state.autocommit_engine = autocommit_engine_for(engine)
        for hook in spec.on_startup:
            await hook(app)
        stop = asyncio.Event()
        # Its own connection for LISTEN: never one of the request pool's.
        listener_engine = make_engine(settings.database_url, pool_size=2, pre_ping=True)
        app.state.work_signal = WorkSignal(listener_engine)
        worker = (
            asyncio.create_task(_worker(app, spec, app.state.work_signal, stop))
            if settings.worker_enabled
            else None
        )
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            for hook in spec.on_shutdown:
                await hook(app)
            await engine.dispose()
            await probe_engine.dispose()
            await listener_engine.dispose()

    app = FastAPI(title=spec.title, version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.tables = spec.tables
    app.state.job_handlers = spec.jobs
    app.state.service_name = spec.name
    if settings.jwt_public_key_file or settings.jwt_jwks_url:
        pem = (
            Path(settings.jwt_public_key_file).read_bytes() if settings.jwt_public_key_file else b""
        )
        app.state.token_verifier = TokenVerifier(
            pem,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            jwks_url=settings.jwt_jwks_url,
        )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(IdempotencyMiddleware, prechecks=spec.prechecks)
    app.add_middleware(RequestLimitsMiddleware, limits=settings.request_limits())
    app.add_middleware(RequestContextMiddleware, service=spec.name)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: the database answers")
    async def readyz(request: Request) -> Response:
        try:
            async with asyncio.timeout(2):
                async with request.app.state.probe_engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return problem_response(
                request,
                status=503,
                code="database_unreachable",
                title="The database does not answer",
                detail=type(exc).__name__,
            )
        return JSONResponse({"status": "ready"})

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    app.include_router(inbox_router(spec.event_handlers))
    for router in spec.routers:
        app.include_router(router)
    return app
