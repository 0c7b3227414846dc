from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class OrdersSettings(PaymentSettings):
    port: int = Field(8001, alias="PORT")


@lru_cache
def get_settings() -> OrdersSettings:
    return OrdersSettings()  # values come from the environment
