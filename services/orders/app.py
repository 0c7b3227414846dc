"""The orders service: `uvicorn services.orders.app:create_app --factory`."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.config import OrdersSettings, get_settings
from services.orders.eligibility import service as eligibility
from services.orders.eligibility.router import router as eligibility_router
from services.orders.gifts import service as gifts
from services.orders.gifts.router import router as gifts_router
from services.orders.groups import settlement as group_settlement
from services.orders.groups.router import router as groups_router
from services.orders.groups.service import EXPIRE_JOB as GROUP_EXPIRE_JOB
from services.orders.models import payments, platform
from services.orders.orders import settlement
from services.orders.orders.router import PLACE_PRECHECK, orders_router
from services.orders.orders.service import (
    COMPLETE_JOB,
    REFERENCE_PREFIX,
    REFUND_JOB,
    Orders,
)
from services.orders.pickup.router import router as pickup_router
from services.orders.presales import service as presales
from services.orders.presales.router import presales_router
from shared.app import ServiceSpec, create_service_app
from shared.events import EventHandlers, EventPublisher
from shared.events.contracts import MemberTierSet
from shared.payments import (
    PaymentHooks,
    close_payments,
    install_payments,
    payments_router,
    run_simulated_provider,
    simulated_router,
    webhook_router,
)
from shared.scheduler import Detached, Job


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    orders = Orders(
        service="orders",
        platform=platform,
        publisher=EventPublisher(
            source="orders", tables=platform, subscribers=list(settings.subscribers())
        ),
        order_ttl=timedelta(minutes=settings.order_ttl_minutes),
    )
    hooks = PaymentHooks()
    hooks.register(REFERENCE_PREFIX, orders.on_payment)
    install = install_payments(payments, hooks)

    async def startup(app: FastAPI) -> None:
        await install(app)
        orders.sessionmaker = app.state.sessionmaker
        orders.payments = app.state.payments
        app.state.orders = orders

    async def open_campaign(session: AsyncSession, job: Job) -> None:
        await presales.open_due(session, uuid.UUID(job.key))
        await eligibility.draw_due(session, uuid.UUID(job.key))

    async def close_campaign(session: AsyncSession, job: Job) -> None:
        await settlement.close(orders, session, job)

    async def balance_deadline(session: AsyncSession, job: Job) -> None:
        await settlement.balance_deadline(orders, session, job)

    async def expire_group(session: AsyncSession, job: Job) -> None:
        await group_settlement.expire(orders, session, job)

    async def gift_unclaimed(session: AsyncSession, job: Job) -> None:
        await gifts.unclaimed(orders, session, job)

    async def expiry_sweep(_: FastAPI) -> float | None:
        while await orders.expire_due() > 0:
            pass
        return await orders.next_expiry_in()

    handlers = EventHandlers()
    handlers.on(MemberTierSet)(eligibility.on_member_tier_set)
    # Eligibility and gifts first: their static paths must win over /v1/presales/{id} and
    # /v1/orders/{order_id}.
    routers = [
        eligibility_router,
        gifts_router,
        pickup_router,
        presales_router(),
        orders_router(),
        groups_router,
        payments_router(),
        webhook_router(),
    ]
    if settings.payment_provider == "simulated":
        routers.append(simulated_router())
    spec = ServiceSpec(
        name="orders",
        title="Qunbuy orders: pre-sales, group buys, pickup points",
        tables=platform,
        routers=routers,
        event_handlers=handlers,
        on_startup=[startup],
        on_shutdown=[close_payments],
        prechecks=[PLACE_PRECHECK],
        periodic=[expiry_sweep, run_simulated_provider],
        jobs={
            presales.OPEN_JOB: open_campaign,
            presales.CLOSE_JOB: close_campaign,
            settlement.BALANCE_DEADLINE_JOB: balance_deadline,
            COMPLETE_JOB: orders.complete,
            REFUND_JOB: Detached(orders.run_refund),
            GROUP_EXPIRE_JOB: expire_group,
            gifts.UNCLAIMED_JOB: gift_unclaimed,
        },
    )
    return create_service_app(spec, settings)
