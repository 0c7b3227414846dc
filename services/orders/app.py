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
    webhook_router,
)


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    spec = ServiceSpec(
        name="orders",
        title="Qunbuy orders: pre-sales, group buys, pickup points",
        tables=platform,
        routers=[payments_router(), webhook_router()],
        on_startup=[install_payments(payments)],
        on_shutdown=[close_payments],
        periodic=[run_simulated_provider],
    )
    return create_service_app(spec, settings or get_settings())
