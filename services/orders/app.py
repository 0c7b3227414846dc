"""The orders service: `uvicorn services.orders.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.orders.config import OrdersSettings, get_settings
from services.orders.models import platform
from shared.app import ServiceSpec, create_service_app


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    spec = ServiceSpec(
        name="orders",
        title="Qunbuy orders: pre-sales, group buys, pickup points",
        tables=platform,
    )
    return create_service_app(spec, settings or get_settings())
