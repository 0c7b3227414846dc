from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.limits import LimitSettings


class GatewaySettings(LimitSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    mode: Literal["embedded", "production"] = Field("production", alias="QUNBUY_MODE")
    port: int = Field(8000, alias="PORT")
    orders_url: str = Field("http://127.0.0.1:8001", alias="ORDERS_URL")
    crowdfund_url: str = Field("http://127.0.0.1:8002", alias="CROWDFUND_URL")
    referrals_url: str = Field("http://127.0.0.1:8003", alias="REFERRALS_URL")
    # The token signing key (EC P-256, PEM). Generated on first start in the embedded mode.
    jwt_private_key_file: str = Field(..., alias="JWT_PRIVATE_KEY_FILE")
    jwt_issuer: str = Field("qunbuy-gateway", alias="JWT_ISSUER")
    jwt_audience: str = Field("qunbuy", alias="JWT_AUDIENCE")
    token_ttl_seconds: int = Field(3600, alias="TOKEN_TTL_SECONDS")
    upstream_connect_timeout: float = Field(2.0, alias="UPSTREAM_CONNECT_TIMEOUT")
    upstream_read_timeout: float = Field(30.0, alias="UPSTREAM_READ_TIMEOUT")
    upstream_pool_size: int = Field(200, alias="UPSTREAM_POOL_SIZE")
    log_level: str = Field("INFO", alias="LOG_LEVEL")

    @property
    def dev_login_enabled(self) -> bool:
        return self.mode == "embedded"

    def upstreams(self) -> dict[str, str]:
        return {
            "orders": self.orders_url.rstrip("/"),
            "crowdfund": self.crowdfund_url.rstrip("/"),
            "referrals": self.referrals_url.rstrip("/"),
        }


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()  # values come from the environment
