"""The orders service: `uvicorn services.orders.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.orders.config import OrdersSettings, get_settings
from services.orders.models import payments, platform
from shared.app import ServiceSpec, create_service_app
from shared.payments import (
    close_payments,
    install_payments,
    payments_router,
    run_simulated_provider,
    simulated_router,
    webhook_router,
)


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    routers = [payments_router(), webhook_router()]
    if settings.payment_provider == "simulated":
        routers.append(simulated_router())
    spec = ServiceSpec(
        name="orders",
        title="Qunbuy orders: pre-sales, group buys, pickup points",
        tables=platform,
        routers=routers,
        on_startup=[install_payments(payments)],
        on_shutdown=[close_payments],
        periodic=[run_simulated_provider],
    )
    return create_service_app(spec, settings)
