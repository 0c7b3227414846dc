"""Settings shared by every process. Each process subclasses :class:`ServiceSettings`.

Secrets have no defaults outside the embedded development mode: ``QUNBUY_MODE=embedded``
(what ``qunbuy up`` sets) fills them with development values; any other mode refuses to
start without them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.limits import LimitSettings

__all__ = ["DEV_EVENT_SECRET", "ServiceSettings"]

DEV_EVENT_SECRET = "dev-only-event-signing-secret"  # noqa: S105 - embedded mode only


class ServiceSettings(LimitSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    mode: Literal["embedded", "production"] = Field("production", alias="QUNBUY_MODE")
    database_url: str = Field(..., alias="DATABASE_URL")
    # Public key (PEM) that verifies user tokens; the gateway holds the private half.
    jwt_public_key_file: str | None = Field(None, alias="JWT_PUBLIC_KEY_FILE")
    # Or (and) the gateway's JWKS, read again when a token names a key not known yet: a
    # rotated key is then accepted without restarting the service.
    jwt_jwks_url: str | None = Field(None, alias="JWT_JWKS_URL")
    jwt_issuer: str = Field("qunbuy-gateway", alias="JWT_ISSUER")
    jwt_audience: str = Field("qunbuy", alias="JWT_AUDIENCE")
    # HMAC secret that signs events between services (and that receivers verify).
    event_secret: str = Field("", alias="EVENT_SECRET")
    # Comma-separated name=url pairs: where this service's events are delivered.
    event_subscribers: str = Field("", alias="EVENT_SUBSCRIBERS")
    worker_enabled: bool = Field(True, alias="WORKER_ENABLED")
    # The safety net: NOTIFY wakes the worker when work arrives; this is how long it sleeps
    # at most when none does (a notification lost while its connection was down).
    worker_poll_seconds: float = Field(10.0, alias="WORKER_POLL_SECONDS", gt=0)
    event_max_attempts: int = Field(12, alias="EVENT_MAX_ATTEMPTS")
    event_backoff_base_seconds: float = Field(1.0, alias="EVENT_BACKOFF_BASE_SECONDS")
    event_backoff_max_seconds: float = Field(600.0, alias="EVENT_BACKOFF_MAX_SECONDS")
    # Events a relay POSTs at once to a subscriber (1: one event a POST, as before batches);
    # a subscriber takes at most 500 (shared/events/_inbox.py).
    event_max_events_per_post: int = Field(100, alias="EVENT_MAX_EVENTS_PER_POST", ge=1, le=500)
    log_level: str = Field("INFO", alias="LOG_LEVEL")
    # The most connections a process opens to its database, kept once opened (no overflow:
    # shared/db.py make_engine).
    db_pool_size: int = Field(20, alias="DB_POOL_SIZE", gt=0)
    # How long a request waits for a pooled connection before it is answered 503
    # database_busy (a burst larger than the pool queues up to this long).
    db_pool_timeout_seconds: float = Field(30.0, alias="DB_POOL_TIMEOUT_SECONDS", gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> ServiceSettings:
        if self.mode == "embedded" and not self.event_secret:
            object.__setattr__(self, "event_secret", DEV_EVENT_SECRET)
        if not self.event_secret:
            raise ValueError("EVENT_SECRET must be set outside the embedded mode")
        return self

    def subscribers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.event_subscribers.split(","))):
            name, _, url = pair.partition("=")
            if not url:
                raise ValueError(f"EVENT_SUBSCRIBERS entry {pair!r} is not name=url")
            out[name.strip()] = url.strip().rstrip("/")
        return out
