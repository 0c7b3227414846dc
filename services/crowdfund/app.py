"""The crowdfund service: `uvicorn services.crowdfund.app:create_app --factory`."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.charges.router import router as charges_router
from services.crowdfund.charges.service import Charges
from services.crowdfund.config import CrowdfundSettings, get_settings
from services.crowdfund.models import payments, platform
from services.crowdfund.pledges.router import router as pledges_router
from services.crowdfund.pledges.service import REFERENCE_PREFIX, REFUND_JOB, Pledges
from services.crowdfund.projects import service as projects
from services.crowdfund.projects.router import router as projects_router
from services.crowdfund.settlements import service as settlements
from services.crowdfund.settlements.router import router as settlements_router
from services.crowdfund.updates.router import router as updates_router
from shared.app import ServiceSpec, create_service_app
from shared.events import EventPublisher
from shared.payments import (
    PaymentHooks,
    close_payments,
    install_payments,
    run_simulated_provider,
    simulated_router,
    webhook_router,
)
from shared.scheduler import Detached, Job


def create_app(settings: CrowdfundSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    publisher = EventPublisher(
        source="crowdfund", tables=platform, subscribers=list(settings.subscribers())
    )
    pledges = Pledges(
        service="crowdfund",
        platform=platform,
        publisher=publisher,
        hold_ttl=timedelta(minutes=settings.pledge_hold_minutes),
        payment_fee_bps=settings.payment_fee_bps,
    )
    charges = Charges(
        pledges=pledges,
        rate_per_second=settings.charge_rate_per_second,
        batch=settings.charge_batch,
        concurrency=settings.charge_concurrency,
    )
    payouts = settlements.Settlements(tables=platform)
    hooks = PaymentHooks()
    hooks.register(REFERENCE_PREFIX, pledges.on_payment)
    hooks.register_payout(settlements.REFERENCE_PREFIX, payouts.on_payout_change)
    install = install_payments(payments, hooks)

    async def startup(app: FastAPI) -> None:
        await install(app)
        pledges.sessionmaker = app.state.sessionmaker
        pledges.payments = app.state.payments
        payouts.sessionmaker = app.state.sessionmaker
        payouts.payments = app.state.payments
        app.state.settlements = payouts
        app.state.publisher = publisher
        app.state.pledges = pledges
        app.state.charges = charges
        # One round of each sweep, as the worker runs them (tests run them too).
        app.state.sweeps = [pledges.expire_due, charges.run_due, charges.drop_due]

    async def launch_project(session: AsyncSession, job: Job) -> None:
        await projects.launch_due(session, uuid.UUID(job.key))

    async def hold_sweep(_: FastAPI) -> float | None:
        while await pledges.expire_due() > 0:
            pass
        return await pledges.next_expiry_in()

    async def charge_sweep(_: FastAPI) -> float | None:
        while await charges.run_due() + await charges.drop_due() > 0:
            pass
        return await charges.next_due_in()

    async def deadline(session: AsyncSession, job: Job) -> None:
        await charges.deadline(session, job)

    # Settlements first: /v1/projects/settlements must win over /v1/projects/{id}.
    routers = [
        settlements_router,
        projects_router,
        pledges_router,
        charges_router,
        updates_router,
        webhook_router(),
    ]
    if settings.payment_provider == "simulated":
        # Under /v1/pledges, which the gateway sends here (/v1/payments goes to orders).
        routers.append(simulated_router(prefix="/v1/pledges/payments"))
    spec = ServiceSpec(
        name="crowdfund",
        title="Qunbuy crowdfunding: projects, reward tiers, pledges",
        tables=platform,
        routers=routers,
        on_startup=[startup],
        on_shutdown=[close_payments],
        periodic=[hold_sweep, charge_sweep, run_simulated_provider],
        jobs={
            projects.LAUNCH_JOB: launch_project,
            projects.DEADLINE_JOB: deadline,
            settlements.SETTLE_JOB: payouts.settle,
            settlements.PAYOUT_JOB: Detached(payouts.run_payout),
            REFUND_JOB: Detached(pledges.run_refund),
        },
    )
    return create_service_app(spec, settings)
