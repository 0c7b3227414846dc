"""The crowdfund service: `uvicorn services.crowdfund.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.crowdfund.config import CrowdfundSettings, get_settings
from services.crowdfund.models import payments, platform
from shared.app import ServiceSpec, create_service_app
from shared.payments import (
    close_payments,
    install_payments,
    run_simulated_provider,
    webhook_router,
)


def create_app(settings: CrowdfundSettings | None = None) -> FastAPI:
    # Pledges save a card (create_setup) and are charged off-session at the deadline
    # (charge_off_session); the pledge endpoints call those, so only the webhook is
    # mounted here.
    spec = ServiceSpec(
        name="crowdfund",
        title="Qunbuy crowdfunding: projects, reward tiers, pledges",
        tables=platform,
        routers=[webhook_router()],
        on_startup=[install_payments(payments)],
        on_shutdown=[close_payments],
        periodic=[run_simulated_provider],
    )
    return create_service_app(spec, settings or get_settings())
