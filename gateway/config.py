from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.limits import LimitSettings


class GatewaySettings(LimitSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    mode: Literal["embedded", "production"] = Field("production", alias="QUNBUY_MODE")
    port: int = Field(8000, alias="PORT")
    orders_url: str = Field("http://127.0.0.1:8001", alias="ORDERS_URL")
    crowdfund_url: str = Field("http://127.0.0.1:8002", alias="CROWDFUND_URL")
    referrals_url: str = Field("http://127.0.0.1:8003", alias="REFERRALS_URL")
    # The identity store (customers, merchants, staff, sessions). Required in production.
    database_url: str | None = Field(None, alias="DATABASE_URL")
    # The most connections to the identity store, kept once opened (shared/db.py).
    db_pool_size: int = Field(10, alias="DB_POOL_SIZE", gt=0)
    db_pool_timeout_seconds: float = Field(30.0, alias="DB_POOL_TIMEOUT_SECONDS", gt=0)
    # The token signing key (EC P-256, PEM). Generated on first start in the embedded mode.
    jwt_private_key_file: str = Field(..., alias="JWT_PRIVATE_KEY_FILE")
    # Public keys (PEM, one or more) of keys that signed tokens before a rotation: still
    # accepted and published in the JWKS until the tokens they signed have expired.
    jwt_previous_public_keys_file: str | None = Field(None, alias="JWT_PREVIOUS_PUBLIC_KEYS_FILE")
    jwt_issuer: str = Field("qunbuy-gateway", alias="JWT_ISSUER")
    jwt_audience: str = Field("qunbuy", alias="JWT_AUDIENCE")
    token_ttl_seconds: int = Field(900, alias="TOKEN_TTL_SECONDS", gt=0)
    refresh_token_ttl_seconds: int = Field(30 * 86400, alias="REFRESH_TOKEN_TTL_SECONDS", gt=0)
    invitation_ttl_seconds: int = Field(7 * 86400, alias="STAFF_INVITATION_TTL_SECONDS", gt=0)
    # WeChat's API (the embedded default points it at the fake in qunbuy/fake_wechat.py).
    wechat_api_base: str = Field("https://api.weixin.qq.com", alias="WECHAT_API_BASE")
    wechat_timeout_seconds: float = Field(5.0, alias="WECHAT_TIMEOUT_SECONDS", gt=0)
    # The mini-programs: "appid=secret" pairs, comma-separated in the variable, or one per
    # line in the file (a mounted Secret). Never stored in the database.
    wechat_app_secrets: str = Field("", alias="WECHAT_APP_SECRETS")
    wechat_credentials_file: str | None = Field(None, alias="WECHAT_CREDENTIALS_FILE")
    # Rate limits (docs/identity.md): counters in Redis when set (replicas share them).
    redis_url: str | None = Field(None, alias="REDIS_URL")
    rate_limits_enabled: bool = Field(True, alias="RATE_LIMITS_ENABLED")
    # Per caller (user id, or client address) and route class; the limits library's notation.
    rate_limit_login: str = Field("20/minute", alias="RATE_LIMIT_LOGIN")
    rate_limit_write: str = Field("60/minute", alias="RATE_LIMIT_WRITE")
    rate_limit_read: str = Field("600/minute", alias="RATE_LIMIT_READ")
    # Failed staff sign-ins before more are refused (429 login_throttled).
    login_failures_per_account: str = Field("5/15minutes", alias="LOGIN_FAILURES_PER_ACCOUNT")
    login_failures_per_address: str = Field("30/15minutes", alias="LOGIN_FAILURES_PER_ADDRESS")
    # How often the services' OpenAPI documents are read again for the merged one.
    openapi_refresh_seconds: float = Field(30.0, alias="OPENAPI_REFRESH_SECONDS", gt=0)
    upstream_connect_timeout: float = Field(2.0, alias="UPSTREAM_CONNECT_TIMEOUT")
    upstream_read_timeout: float = Field(30.0, alias="UPSTREAM_READ_TIMEOUT")
    upstream_pool_size: int = Field(200, alias="UPSTREAM_POOL_SIZE")
    log_level: str = Field("INFO", alias="LOG_LEVEL")

    @model_validator(mode="after")
    def _identity_store(self) -> GatewaySettings:
        if self.mode == "production" and not self.database_url:
            raise ValueError("DATABASE_URL (the identity store) must be set in production")
        return self

    @property
    def dev_login_enabled(self) -> bool:
        return self.mode == "embedded"

    def upstreams(self) -> dict[str, str]:
        return {
            "orders": self.orders_url.rstrip("/"),
            "crowdfund": self.crowdfund_url.rstrip("/"),
            "referrals": self.referrals_url.rstrip("/"),
        }

    def wechat_apps(self) -> dict[str, str]:
        """App id -> app secret of every configured mini-program."""
        text = self.wechat_app_secrets.replace(",", "\n")
        if self.wechat_credentials_file:
            text += "\n" + Path(self.wechat_credentials_file).read_text()
        apps: dict[str, str] = {}
        for line in filter(None, (raw.strip() for raw in text.splitlines())):
            app_id, _, secret = line.partition("=")
            if not app_id.strip() or not secret.strip():
                raise ValueError("WeChat credentials are 'appid=secret' pairs")
            apps[app_id.strip()] = secret.strip()
        return apps


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()  # values come from the environment
