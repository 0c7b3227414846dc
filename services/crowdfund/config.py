from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.payments import PaymentSettings


class CrowdfundSettings(PaymentSettings):
    port: int = Field(8002, alias="PORT")
    # A pledge whose card is not saved (or whose wallet payment is not made) gives its
    # reward's places back after this long.
    pledge_hold_minutes: int = Field(30, ge=1, le=24 * 60, alias="PLEDGE_HOLD_MINUTES")
    # Off-session charges per second, over every worker (Stripe allows about 25 requests/s
    # per endpoint); 0: no limit (the simulated provider in benchmarks).
    charge_rate_per_second: float = Field(20.0, ge=0, le=1000, alias="CHARGE_RATE_PER_SECOND")
    # Charges a worker claims at once, and runs at once.
    charge_batch: int = Field(20, ge=1, le=500, alias="CHARGE_BATCH")
    charge_concurrency: int = Field(4, ge=1, le=64, alias="CHARGE_CONCURRENCY")
    # The platform's fee on new approvals, and the payment fee booked per charge.
    platform_fee_bps: int = Field(500, ge=0, le=5000, alias="PLATFORM_FEE_BPS")
    payment_fee_bps: int = Field(60, ge=0, le=1000, alias="PAYMENT_FEE_BPS")


@lru_cache
def get_settings() -> CrowdfundSettings:
    return CrowdfundSettings()  # values come from the environment
