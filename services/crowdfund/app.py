"""The crowdfund service: `uvicorn services.crowdfund.app:create_app --factory`."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.config import CrowdfundSettings, get_settings
from services.crowdfund.models import payments, platform
from services.crowdfund.projects import service as projects
from services.crowdfund.projects.router import router as projects_router
from shared.app import ServiceSpec, create_service_app
from shared.events import EventPublisher
from shared.payments import (
    close_payments,
    install_payments,
    run_simulated_provider,
    simulated_router,
    webhook_router,
)
from shared.scheduler import Job


def create_app(settings: CrowdfundSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    publisher = EventPublisher(
        source="crowdfund", tables=platform, subscribers=list(settings.subscribers())
    )
    install = install_payments(payments)

    async def startup(app: FastAPI) -> None:
        await install(app)
        app.state.publisher = publisher

    async def launch_project(session: AsyncSession, job: Job) -> None:
        await projects.launch_due(session, uuid.UUID(job.key))

    routers = [projects_router, webhook_router()]
    if settings.payment_provider == "simulated":
        routers.append(simulated_router())
    spec = ServiceSpec(
        name="crowdfund",
        title="Qunbuy crowdfunding: projects, reward tiers, pledges",
        tables=platform,
        routers=routers,
        on_startup=[startup],
        on_shutdown=[close_payments],
        periodic=[run_simulated_provider],
        jobs={projects.LAUNCH_JOB: launch_project},
    )
    return create_service_app(spec, settings)
