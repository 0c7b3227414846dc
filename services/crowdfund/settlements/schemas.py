"""Request and response bodies of settlements."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.crowdfund.settlements.repository import SettlementRow
from shared.text import SafeStr


class PaidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_reference: SafeStr = Field(
        min_length=1, max_length=200, description="The bank transfer's (or payout's) reference."
    )


class PayoutAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payout_account: SafeStr | None = Field(
        max_length=80,
        description="The creator's Stripe connected account id (acct_...); null removes it "
        "(an admin then pays outside and marks the statement paid).",
    )


class PayoutAccountOut(BaseModel):
    project_id: uuid.UUID
    payout_account: str | None


class SettlementOut(BaseModel):
    """collected - refunds - platform_fee - payment_fees = payout, to the fen."""

    id: uuid.UUID
    project_id: uuid.UUID
    merchant_id: str
    currency: str
    collected: int = Field(description="Captured from the project's pledges.")
    refunds: int = Field(
        description="Refunds no statement deducted yet: this project's, and any of the "
        "creator's earlier projects since their settlement."
    )
    platform_fee_bps: int
    platform_fee: int = Field(description="(collected - refunds) x bps / 10000, rounded down.")
    payment_fees: int = Field(description="The providers' fees, booked per charge.")
    payout: int = Field(description="Negative: the creator owes it (status `owed`).")
    pledges_collected: int
    pledges_dropped: int
    status: Literal["pending", "paying", "paid", "failed", "owed"] = Field(
        description="paying: transferred to `payout_account` now; failed: the transfer was "
        "refused or reversed (`failure_reason`); owed: the creator owes it, no payout."
    )
    external_reference: str | None = Field(
        description="The bank transfer's reference, or the provider's transfer id."
    )
    paid_by: str | None = Field(description="The admin who paid it, or started its transfer.")
    paid_at: datetime | None
    payout_account: str | None
    payout_attempt: int = Field(description="Transfers started for it (each its own).")
    failure_reason: str | None
    reversed_amount: int = Field(
        description="Paid by transfer, what the provider then took back in part (the creator "
        "kept payout - reversed_amount; a person settles the rest)."
    )
    created_at: datetime

    @classmethod
    def of(cls, x: SettlementRow) -> SettlementOut:
        return cls(
            id=x.id,
            project_id=x.project_id,
            merchant_id=x.merchant_id,
            currency=x.currency,
            collected=x.collected,
            refunds=x.refunds,
            platform_fee_bps=x.platform_fee_bps,
            platform_fee=x.platform_fee,
            payment_fees=x.payment_fees,
            payout=x.payout,
            pledges_collected=x.pledges_collected,
            pledges_dropped=x.pledges_dropped,
            status=x.status,
            external_reference=x.external_reference,
            paid_by=x.paid_by,
            paid_at=x.paid_at,
            payout_account=x.payout_account,
            payout_attempt=x.payout_attempt,
            failure_reason=x.failure_reason,
            reversed_amount=x.reversed_amount,
            created_at=x.created_at,
        )
