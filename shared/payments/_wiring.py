"""How a service takes the payment layer on: settings -> provider -> ``app.state.payments``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import make_engine, sessionmaker_for
from shared.events import EventPublisher
from shared.payments._errors import PaymentsNotConfigured
from shared.payments._hooks import PaymentHooks
from shared.payments._provider import PaymentProvider
from shared.payments._settings import PaymentSettings
from shared.payments._simulated import SimulatedProvider
from shared.payments._state import PaymentContext
from shared.payments.tables import PaymentTables
from shared.tables import PlatformTables

__all__ = [
    "WEBHOOK_PATH",
    "build_provider",
    "close_payments",
    "install_payments",
    "make_context",
    "payment_context",
    "run_simulated_provider",
]

WEBHOOK_PATH = "/webhooks/stripe"
_MAX_BATCHES = 20
_SIMULATED_POOL_SIZE = 8
_log = structlog.get_logger("qunbuy.payments")


def build_provider(settings: PaymentSettings, *, tables: PaymentTables) -> PaymentProvider | None:
    """The configured provider, or None when payments are disabled in this process."""
    if settings.payment_provider == "stripe":
        from shared.payments._stripe import StripeProvider

        if not settings.stripe_webhook_secret:
            _log.warning("stripe_webhook_secret_missing", effect="every webhook is refused")
        return StripeProvider(
            api_key=settings.stripe_api_key,
            webhook_secret=settings.stripe_webhook_secret,
            api_base=settings.stripe_api_base,
            max_network_retries=settings.stripe_max_network_retries,
            timeout_seconds=settings.stripe_timeout_seconds,
            api_version=settings.stripe_api_version,
        )
    if settings.payment_provider == "simulated":
        # Its own small pool: it stands for a remote provider, and its calls must never wait
        # for a connection of the pool that the service's requests use. Not pinged before use
        # (three round trips a call): its calls run once more on a connection the server
        # dropped, so a database restart does not surface as a failure of the provider.
        engine = make_engine(settings.database_url, pool_size=_SIMULATED_POOL_SIZE)
        return SimulatedProvider(
            sessionmaker=sessionmaker_for(engine),
            engine=engine,
            tables=tables,
            webhook_secret=settings.simulated_webhook_secret,
            settle_seconds=settings.simulated_settle_seconds,
        )
    return None


def make_context(
    *,
    service: str,
    settings: PaymentSettings,
    platform: PlatformTables,
    tables: PaymentTables,
    provider: PaymentProvider,
    sessionmaker: async_sessionmaker[AsyncSession],
    autocommit: AsyncEngine,
    hooks: PaymentHooks | None = None,
) -> PaymentContext:
    return PaymentContext(
        service=service,
        sessionmaker=sessionmaker,
        autocommit=autocommit,
        hooks=hooks or PaymentHooks(),
        tables=tables,
        provider=provider,
        publisher=EventPublisher(
            source=service, tables=platform, subscribers=list(settings.subscribers())
        ),
        max_amount=settings.payment_max_amount,
    )


def install_payments(
    tables: PaymentTables, hooks: PaymentHooks | None = None
) -> Callable[[FastAPI], Awaitable[None]]:
    """A ``ServiceSpec.on_startup`` hook that puts the :class:`PaymentContext` (or None, when
    ``PAYMENT_PROVIDER`` is disabled) in ``app.state.payments``. ``hooks``: what the service's
    domains do when their payments change (shared/payments/_hooks.py)."""

    async def startup(app: FastAPI) -> None:
        settings = app.state.settings
        if not isinstance(settings, PaymentSettings):
            raise TypeError("a service that takes payments needs PaymentSettings")
        provider = build_provider(settings, tables=tables)
        app.state.payments = (
            None
            if provider is None
            else make_context(
                service=app.state.service_name,
                settings=settings,
                platform=app.state.tables,
                tables=tables,
                provider=provider,
                sessionmaker=app.state.sessionmaker,
                autocommit=app.state.autocommit_engine,
                hooks=hooks,
            )
        )
        _log.info("payments_ready", provider=settings.payment_provider)

    return startup


async def close_payments(app: FastAPI) -> None:
    """A ``ServiceSpec.on_shutdown`` hook: the provider lets go of its connections."""
    ctx = getattr(app.state, "payments", None)
    if isinstance(ctx, PaymentContext):
        await ctx.provider.aclose()


def payment_context(app: FastAPI) -> PaymentContext:
    """The app's payment context, for jobs (``ServiceSpec.periodic``) and tests."""
    ctx = getattr(app.state, "payments", None)
    if not isinstance(ctx, PaymentContext):
        raise PaymentsNotConfigured()
    return ctx


async def run_simulated_provider(app: FastAPI) -> float | None:
    """Worker job: settle the simulated provider's due outcomes and deliver its events to
    this app's webhook endpoint, in process. Does nothing with another provider. Returns the
    seconds until it has something to do again."""
    ctx = getattr(app.state, "payments", None)
    if not isinstance(ctx, PaymentContext) or not isinstance(ctx.provider, SimulatedProvider):
        return None
    provider = ctx.provider
    await provider.settle_due()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://simulated-provider"
    ) as client:

        async def post(body: bytes, signature: str) -> int:
            response = await client.post(
                WEBHOOK_PATH,
                content=body,
                headers={"content-type": "application/json", "Stripe-Signature": signature},
            )
            return response.status_code

        for _ in range(_MAX_BATCHES):
            if await provider.deliver_events(post) == 0:
                break
    return await provider.next_due_in()
