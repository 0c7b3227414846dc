"""Request and response bodies of programs and distributors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from services.referrals.programs.repository import DistributorRow, OverrideRow, ProgramRow
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")


class ProgramIn(BaseModel):
    model_config = _STRICT

    enrollment: Literal["open", "approval"] = Field(
        "approval", description="`open`: any customer joins; `approval`: staff approve (审核)."
    )
    attribution: Literal["first_touch", "last_touch"] = "first_touch"
    binding_days: StrictInt = Field(30, ge=1, le=365, description="How long 锁客 lasts.")
    level1_bps: StrictInt = Field(ge=0, le=10_000, description="Basis points: 100 = 1 %.")
    level2_bps: StrictInt = Field(0, ge=0, le=10_000, description="The upline's (二级).")
    leader_bps: StrictInt = Field(0, ge=0, le=10_000, description="A pickup-point leader's.")
    max_total_bps: StrictInt = Field(
        3000, ge=0, le=10_000, description="The cap on level 1 + level 2 + leader."
    )
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$", description="ISO 4217 of payouts.")
    min_withdrawal: StrictInt = Field(100, ge=1, le=10**10, description="Minor units.")
    withdrawal_fee: StrictInt = Field(0, ge=0, le=10**8, description="Minor units.")
    holding_days: StrictInt | None = Field(
        None,
        ge=0,
        le=365,
        description="Days after a payment until its commissions become available. Unset: an "
        "order's at its completion (the end of its return window), a pledge's 7 days after "
        "its charge.",
    )


class ProgramOut(ProgramIn):
    merchant_id: str
    updated_at: datetime

    @classmethod
    def of(cls, p: ProgramRow) -> ProgramOut:
        return cls(
            merchant_id=p.merchant_id,
            enrollment=p.enrollment,
            attribution=p.attribution,
            binding_days=p.binding_days,
            level1_bps=p.level1_bps,
            level2_bps=p.level2_bps,
            leader_bps=p.leader_bps,
            max_total_bps=p.max_total_bps,
            currency=p.currency,
            min_withdrawal=p.min_withdrawal,
            withdrawal_fee=p.withdrawal_fee,
            holding_days=p.holding_days,
            updated_at=p.updated_at,
        )


class ApplyIn(BaseModel):
    model_config = _STRICT

    merchant_id: SafeStr = Field(min_length=1, max_length=100)
    real_name: SafeStr = Field(min_length=1, max_length=100)
    phone: str = Field(pattern=r"^\+?[0-9][0-9 -]{5,30}$", max_length=32)
    via_code: SafeStr | None = Field(
        None, min_length=1, max_length=16, description="The code of the distributor who invited."
    )


class PayoutAccountIn(BaseModel):
    model_config = _STRICT

    payout_account: SafeStr | None = Field(
        max_length=80,
        description="A Stripe connected account id (acct_...); null removes it (staff then "
        "pay withdrawals outside and mark them paid).",
    )


class AddIn(BaseModel):
    """Staff add one of the merchant's own people (全员分销), active at once."""

    model_config = _STRICT

    user_id: SafeStr = Field(min_length=1, max_length=100)
    real_name: SafeStr = Field(min_length=1, max_length=100)
    phone: str = Field(pattern=r"^\+?[0-9][0-9 -]{5,30}$", max_length=32)


class Balances(BaseModel):
    pending: int = Field(description="Earned on orders not complete yet.")
    available: int = Field(description="May be withdrawn.")
    withdrawing: int = Field(description="Requested, not paid or rejected yet.")
    withdrawn: int
    owed: int = Field(description="Refunded after withdrawal: taken from the next withdrawal.")


class DistributorOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    user_id: str
    code: str
    upline_id: uuid.UUID | None
    status: Literal["pending", "active", "suspended", "rejected"]
    real_name: str
    phone: str = Field(description="Masked except for its owner and staff.")
    kyc_verified: bool
    kyc_verified_by: str | None
    kyc_verified_at: datetime | None
    payout_account: str | None = Field(
        description="The Stripe connected account withdrawals are transferred to, if any."
    )
    created_at: datetime
    balances: Balances | None = None

    @classmethod
    def of(cls, d: DistributorRow, balances: Balances | None = None) -> DistributorOut:
        return cls(
            id=d.id,
            merchant_id=d.merchant_id,
            user_id=d.user_id,
            code=d.code,
            upline_id=d.upline_id,
            status=d.status,
            real_name=d.real_name,
            phone=d.phone,
            kyc_verified=d.kyc_verified_at is not None,
            kyc_verified_by=d.kyc_verified_by,
            kyc_verified_at=d.kyc_verified_at,
            payout_account=d.payout_account,
            created_at=d.created_at,
            balances=balances,
        )


class OverrideIn(BaseModel):
    """Rates for one campaign or project; the program's cap still applies."""

    model_config = _STRICT

    level1_bps: StrictInt = Field(ge=0, le=10_000)
    level2_bps: StrictInt = Field(0, ge=0, le=10_000)
    leader_bps: StrictInt = Field(0, ge=0, le=10_000)


class OverrideOut(OverrideIn):
    merchant_id: str
    target_type: Literal["presale", "project"]
    target_id: str
    updated_at: datetime

    @classmethod
    def of(cls, o: OverrideRow) -> OverrideOut:
        return cls(
            merchant_id=o.merchant_id,
            target_type=o.target_type,
            target_id=o.target_id,
            level1_bps=o.level1_bps,
            level2_bps=o.level2_bps,
            leader_bps=o.leader_bps,
            updated_at=o.updated_at,
        )
