from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class ReferralsSettings(PaymentSettings):
    """Payments are only payouts here: withdrawals paid by Connect transfers
    (``PAYMENT_PROVIDER`` and friends, docs/payments.md)."""

    port: int = Field(8003, alias="PORT")
    # Where a share link points: the mini-program's landing page, given the link's code.
    share_base_url: str = Field(
        "https://m.qunbuy.example/r/", alias="SHARE_BASE_URL", pattern=r"^https?://\S+/$"
    )


@lru_cache
def get_settings() -> ReferralsSettings:
    return ReferralsSettings()  # values come from the environment
