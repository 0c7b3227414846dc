from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import ServiceSettings


class ReferralsSettings(ServiceSettings):
    port: int = Field(8003, alias="PORT")


@lru_cache
def get_settings() -> ReferralsSettings:
    return ReferralsSettings()  # values come from the environment
