from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class OrdersSettings(PaymentSettings):
    port: int = Field(8001, alias="PORT")
    # An unpaid order gives its units back after this long.
    order_ttl_minutes: int = Field(30, ge=1, le=24 * 60, alias="ORDER_TTL_MINUTES")
    # Where a group buy's share link points: the mini-program's group page, given its code.
    group_share_base_url: str = Field(
        "https://m.qunbuy.example/g/", alias="GROUP_SHARE_BASE_URL", pattern=r"^https?://\S+/$"
    )
    # The page a gift's claim link opens; the link adds ?token=... (docs/orders.md, Gifts).
    gift_claim_base_url: str = Field(
        "https://qunbuy.example/gift", pattern=r"^https?://[^\s?#]+$", alias="GIFT_CLAIM_BASE_URL"
    )


@lru_cache
def get_settings() -> OrdersSettings:
    return OrdersSettings()  # values come from the environment
