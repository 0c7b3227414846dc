"""Response bodies of commissions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from services.referrals.commissions.repository import CommissionRow


class CommissionOut(BaseModel):
    id: uuid.UUID
    source_type: str
    source_id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    level: Literal[1, 2]
    payee: Literal["distributor", "leader"] = Field(
        description="distributor: the seller (level 1) or their upline (level 2); leader: the "
        "pickup-point leader the order was collected from (level 1, outside the chain)."
    )
    rate_bps: int
    currency: str
    amount: int
    state: Literal["pending", "available"]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, x: CommissionRow) -> CommissionOut:
        return cls(
            id=x.id,
            source_type=x.source_type,
            source_id=x.source_id,
            merchant_id=x.merchant_id,
            distributor_id=x.distributor_id,
            level=x.level,
            payee=x.payee,
            rate_bps=x.rate_bps,
            currency=x.currency,
            amount=x.amount,
            state=x.state,
            created_at=x.created_at,
            updated_at=x.updated_at,
        )
