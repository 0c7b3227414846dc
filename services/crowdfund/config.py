from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class CrowdfundSettings(PaymentSettings):
    port: int = Field(8002, alias="PORT")


@lru_cache
def get_settings() -> CrowdfundSettings:
    return CrowdfundSettings()  # values come from the environment
