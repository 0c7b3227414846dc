from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class OrdersSettings(PaymentSettings):
    port: int = Field(8001, alias="PORT")
    # An unpaid order gives its units back after this long.
    order_ttl_minutes: int = Field(30, ge=1, le=24 * 60, alias="ORDER_TTL_MINUTES")
    # The page a gift's claim link opens; the link adds ?token=... (docs/orders.md, Gifts).
    gift_claim_base_url: str = Field(
        "https://qunbuy.example/gift", pattern=r"^https?://[^\s?#]+$", alias="GIFT_CLAIM_BASE_URL"
    )


@lru_cache
def get_settings() -> OrdersSettings:
    return OrdersSettings()  # values come from the environment
