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
    status: Literal["pending", "paid", "owed"]
    external_reference: str | None
    paid_by: str | None
    paid_at: datetime | None
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
            created_at=x.created_at,
        )
