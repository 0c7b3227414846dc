"""The gateway: `uvicorn gateway.app:create_app --factory`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.config import GatewaySettings, get_settings
from gateway.customers.router import router as customers_router
from gateway.identity import router as identity_router
from gateway.openapi import MergedOpenAPI
from gateway.proxy import Gateway
from gateway.ratelimit import RateLimiter, RouteLimits, parse_limit
from gateway.sessions.router import router as sessions_router
from gateway.staff.router import router as staff_router
from gateway.upstream import Upstream, UpstreamError, UpstreamPool
from gateway.wechat import WeChatClient
from shared.auth import TokenIssuer, load_or_create_private_key
from shared.db import make_engine, sessionmaker_for
from shared.errors import install_error_handlers, problem_response
from shared.limits import RequestLimitsMiddleware
from shared.observability import RequestContextMiddleware, configure_logging, metrics_endpoint
from shared.openapi import install_openapi

_YOUNG_GC_THRESHOLD = 10_000


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    """The gateway: proxied resources on the raw ASGI path, its own endpoints on FastAPI."""
    settings = settings or get_settings()
    configure_logging("gateway", settings.log_level)
    key_path = Path(settings.jwt_private_key_file)
    if not key_path.exists() and settings.mode != "embedded":
        raise RuntimeError(f"JWT_PRIVATE_KEY_FILE {key_path} does not exist")
    previous = settings.jwt_previous_public_keys_file
    issuer = TokenIssuer(
        load_or_create_private_key(key_path),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.token_ttl_seconds,
        previous=Path(previous).read_bytes() if previous else b"",
    )
    wechat = WeChatClient(
        settings.wechat_api_base, settings.wechat_apps(), timeout=settings.wechat_timeout_seconds
    )
    pool = UpstreamPool(
        settings.upstreams(),
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        pool_size=settings.upstream_pool_size,
    )

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        engine = (
            make_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                pool_timeout=settings.db_pool_timeout_seconds,
            )
            if settings.database_url
            else None
        )
        api.state.sessionmaker = sessionmaker_for(engine) if engine is not None else None
        await pool.start()
        stop = asyncio.Event()
        documents = asyncio.create_task(merged.run(settings.openapi_refresh_seconds, stop))
        # Everything made at start-up lives as long as the process: moved out of the
        # collector's reach, a full collection no longer walks it (a 30-40 ms pause every few
        # thousand proxied requests, which was the gateway's p99).
        gc.freeze()
        # A proxied request allocates a few dozen tracked objects and leaves no cycles; with
        # the default threshold (700) the objects of 32 requests in flight set off a young
        # collection every 26-39 requests, each finding nothing (4-11 us a request in the
        # benchmark, wall time). Cycles are still collected, only 10,000 objects later.
        thresholds = gc.get_threshold()
        gc.set_threshold(_YOUNG_GC_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            stop.set()
            await documents
            await pool.close()
            await wechat.close()
            if engine is not None:
                await engine.dispose()

    app = FastAPI(title="Qunbuy gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.token_issuer = issuer
    app.state.token_verifier = issuer.verifier()
    app.state.wechat = wechat
    limiter = RateLimiter(settings.redis_url)
    app.state.rate_limiter = limiter
    app.state.sessionmaker = None
    app.state.upstreams = pool
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(RequestLimitsMiddleware, limits=settings.request_limits())
    app.add_middleware(RequestContextMiddleware, service="gateway")

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: every service is ready")
    async def readyz(request: Request) -> Response:
        async def probe(name: str, upstream: Upstream) -> tuple[str, str]:
            try:
                async with asyncio.timeout(3):
                    status, _ = await upstream.get("/readyz")
            except (TimeoutError, UpstreamError) as exc:
                return name, type(exc).__name__
            return name, "ready" if status == 200 else f"HTTP {status}"

        results = dict(await asyncio.gather(*(probe(n, u) for n, u in pool.services.items())))
        if all(v == "ready" for v in results.values()):
            return JSONResponse({"status": "ready", "services": results})
        return problem_response(
            request,
            status=503,
            code="services_not_ready",
            title="Some services are not ready",
            detail=", ".join(f"{k}: {v}" for k, v in results.items() if v != "ready"),
            extra={"services": results},
        )

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    app.include_router(identity_router)
    app.include_router(customers_router)
    app.include_router(sessions_router)
    app.include_router(staff_router)
    # Resources of the services (gateway/routes.py) never reach this app: Gateway proxies them.
    # One document for the platform: the services' public endpoints with the gateway's own.
    merged = MergedOpenAPI(app.openapi, pool)
    app.openapi = lambda: merged.document  # type: ignore[method-assign]
    app.state.openapi = merged
    rate_limits = (
        RouteLimits(
            limiter,
            app.state.token_verifier,
            login=parse_limit(settings.rate_limit_login),
            write=parse_limit(settings.rate_limit_write),
            read=parse_limit(settings.rate_limit_read),
        )
        if settings.rate_limits_enabled
        else None
    )
    return Gateway(app, pool=pool, limits=settings.request_limits(), rate_limits=rate_limits)
