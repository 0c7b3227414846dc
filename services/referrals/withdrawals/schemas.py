"""Request and response bodies of withdrawals."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from services.referrals.withdrawals.repository import WithdrawalRow
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")


class WithdrawalIn(BaseModel):
    model_config = _STRICT

    distributor_id: uuid.UUID
    amount: StrictInt = Field(ge=1, le=10**12, description="Minor units to receive.")


class DecisionIn(BaseModel):
    model_config = _STRICT

    reason: SafeStr | None = Field(None, max_length=500)


class PaidIn(BaseModel):
    model_config = _STRICT

    external_reference: SafeStr = Field(
        min_length=1, max_length=200, description="The bank or WeChat transfer it was paid by."
    )


class WithdrawalOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    amount: int
    fee: int
    taken_back: int = Field(description="Owed amounts (refunds after withdrawal) settled by it.")
    currency: str
    status: Literal["requested", "approved", "paying", "paid", "rejected", "failed"] = Field(
        description="paying: approved, and being paid by a transfer to `payout_account`."
    )
    decided_by: str | None
    reason: str | None
    external_reference: str | None = Field(
        description="The bank or WeChat transfer's reference, or the provider's transfer id."
    )
    payout_account: str | None
    paid_at: datetime | None
    reversed_amount: int = Field(
        description="What the provider took back from the transfer (a reversal in full or in "
        "part): returned to the distributor's available balance once the withdrawal is paid "
        "(while it is paying, only recorded)."
    )
    created_at: datetime

    @classmethod
    def of(cls, x: WithdrawalRow) -> WithdrawalOut:
        return cls(
            id=x.id,
            merchant_id=x.merchant_id,
            distributor_id=x.distributor_id,
            amount=x.amount,
            fee=x.fee,
            taken_back=x.taken_back,
            currency=x.currency,
            status=x.status,
            decided_by=x.decided_by,
            reason=x.reason,
            external_reference=x.external_reference,
            payout_account=x.payout_account,
            paid_at=x.paid_at,
            reversed_amount=x.reversed_amount,
            created_at=x.created_at,
        )
