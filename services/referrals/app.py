"""The referrals service: `uvicorn services.referrals.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.referrals.config import ReferralsSettings, get_settings
from services.referrals.models import platform
from shared.app import ServiceSpec, create_service_app


def create_app(settings: ReferralsSettings | None = None) -> FastAPI:
    spec = ServiceSpec(
        name="referrals",
        title="Qunbuy referrals: links, attribution, commissions, withdrawals",
        tables=platform,
    )
    return create_service_app(spec, settings or get_settings())
