"""The crowdfund service: `uvicorn services.crowdfund.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.crowdfund.config import CrowdfundSettings, get_settings
from services.crowdfund.models import platform
from shared.app import ServiceSpec, create_service_app


def create_app(settings: CrowdfundSettings | None = None) -> FastAPI:
    spec = ServiceSpec(
        name="crowdfund",
        title="Qunbuy crowdfunding: projects, reward tiers, pledges",
        tables=platform,
    )
    return create_service_app(spec, settings or get_settings())
