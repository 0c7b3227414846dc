from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class OrdersSettings(PaymentSettings):
    port: int = Field(8001, alias="PORT")
    # An unpaid order gives its units back after this long.
    order_ttl_minutes: int = Field(30, ge=1, le=24 * 60, alias="ORDER_TTL_MINUTES")


@lru_cache
def get_settings() -> OrdersSettings:
    return OrdersSettings()  # values come from the environment
