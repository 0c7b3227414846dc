from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import ServiceSettings


class OrdersSettings(ServiceSettings):
    port: int = Field(8001, alias="PORT")


@lru_cache
def get_settings() -> OrdersSettings:
    return OrdersSettings()  # values come from the environment
