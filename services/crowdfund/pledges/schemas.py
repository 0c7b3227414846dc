"""Request and response bodies of the pledge endpoints."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from services.crowdfund.pledges.repository import ItemRow, PledgeRow
from services.crowdfund.projects.schemas import MAX_AMOUNT, Region
from shared.payments import PaymentRow, SetupRow
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")
MAX_PLEDGE_QUANTITY = 100

PledgeStatus = Literal[
    "pending",
    "confirmed",
    "collected",
    "charge_due",
    "charging",
    "payment_failed",
    "dropped",
    "cancelled",
    "expired",
]
PledgeMethod = Literal["card", "wechat_pay", "alipay"]


class AddonIn(BaseModel):
    model_config = _STRICT

    reward_id: uuid.UUID
    quantity: StrictInt = Field(1, ge=1, le=MAX_PLEDGE_QUANTITY)


class PledgeTerms(BaseModel):
    """What a backer chooses (and may change until the deadline)."""

    model_config = _STRICT

    reward_id: uuid.UUID | None = Field(
        None, description="The tier; none: support without reward (无私支持)."
    )
    quantity: StrictInt = Field(1, ge=1, le=MAX_PLEDGE_QUANTITY, description="Of the tier.")
    addons: list[AddonIn] = Field(default_factory=list, max_length=20)
    amount: StrictInt = Field(
        ge=1,
        le=MAX_AMOUNT,
        description="Minor units: at least the tier's minimum times the quantity, plus add-ons and "
        "shipping (more is a gift to the creator).",
    )
    region: Region | None = Field(None, description="Where to ship (ISO 3166 code).")


class PledgeCreate(PledgeTerms):
    method: PledgeMethod = Field(
        "card",
        description="`card`: saved now and charged if the project succeeds (flexible "
        "projects: charged now); `wechat_pay`, `alipay`: paid now, refunded if it fails.",
    )
    payment_method: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="A payment method id or test token: given, the card is saved (or the "
        "payment confirmed) now; else the client does it with the client secret.",
    )
    referral_code: SafeStr | None = Field(None, min_length=1, max_length=64)
    source: SafeStr | None = Field(
        None, min_length=1, max_length=40, description="The channel: a link, a group, a poster."
    )


class PaymentMethodIn(BaseModel):
    model_config = _STRICT

    payment_method: SafeStr = Field(min_length=1, max_length=255)


class RefundIn(BaseModel):
    model_config = _STRICT

    amount: StrictInt | None = Field(
        None, ge=1, le=MAX_AMOUNT, description="Minor units; omitted: all that remains."
    )


class ItemOut(BaseModel):
    reward_id: uuid.UUID
    quantity: int
    unit_amount: int

    @classmethod
    def of(cls, x: ItemRow) -> ItemOut:
        return cls(reward_id=x.reward_id, quantity=x.quantity, unit_amount=x.unit_amount)


class PaymentSummary(BaseModel):
    """The payment to complete (or completed): what the mini-program needs to pay it."""

    id: uuid.UUID
    status: str
    amount: int
    currency: str
    method: str
    client_secret: str | None
    next_action: dict[str, Any] | None
    failure_code: str | None
    failure_message: str | None

    @classmethod
    def of(cls, p: PaymentRow, *, show_secret: bool) -> PaymentSummary:
        return cls(
            id=p.id,
            status=p.status,
            amount=p.amount,
            currency=p.currency,
            method=p.method,
            client_secret=p.client_secret if show_secret else None,
            next_action=p.next_action,
            failure_code=p.failure_code,
            failure_message=p.failure_message,
        )


class SetupSummary(BaseModel):
    """The saved card (SetupIntent): confirmed by the client with the secret if needed."""

    id: uuid.UUID
    status: str
    client_secret: str | None
    next_action: dict[str, Any] | None
    failure_code: str | None
    failure_message: str | None

    @classmethod
    def of(cls, s: SetupRow, *, show_secret: bool) -> SetupSummary:
        return cls(
            id=s.id,
            status=s.status,
            client_secret=s.client_secret if show_secret else None,
            next_action=s.next_action,
            failure_code=s.failure_code,
            failure_message=s.failure_message,
        )


class PledgeOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    merchant_id: str
    customer_id: str
    status: PledgeStatus
    cancel_reason: str | None
    reward_id: uuid.UUID | None
    items: list[ItemOut]
    amount: int
    currency: str
    method: PledgeMethod
    region: str | None
    shipping_fee: int
    referral_code: str | None
    source: str | None
    hold_expires_at: datetime = Field(description="Unconfirmed, the places go back then.")
    charge_attempt: int
    failure_code: str | None
    fix_until: datetime | None = Field(description="Pay before this, or the pledge is dropped.")
    next_retry_at: datetime | None
    paid_total: int
    refunded_total: int
    refund_pending: int = Field(description="Refunds decided, not confirmed by the provider yet.")
    created_at: datetime
    payment: PaymentSummary | None = None
    setup: SetupSummary | None = None

    @classmethod
    def of(
        cls,
        x: PledgeRow,
        items: list[ItemRow],
        payment: PaymentSummary | None = None,
        setup: SetupSummary | None = None,
    ) -> PledgeOut:
        return cls(
            id=x.id,
            project_id=x.project_id,
            merchant_id=x.merchant_id,
            customer_id=x.customer_id,
            status=x.status,
            cancel_reason=x.cancel_reason,
            reward_id=x.reward_id,
            items=[ItemOut.of(i) for i in items],
            amount=x.amount,
            currency=x.currency,
            method=x.method,
            region=x.region,
            shipping_fee=x.shipping_fee,
            referral_code=x.referral_code,
            source=x.source,
            hold_expires_at=x.hold_expires_at,
            charge_attempt=x.charge_attempt,
            failure_code=x.failure_code,
            fix_until=x.fix_until,
            next_retry_at=x.charge_at if x.status == "payment_failed" else None,
            paid_total=x.paid,
            refunded_total=x.refunded_amount,
            refund_pending=x.refund_promised - x.refunded_amount,
            created_at=x.created_at,
            payment=payment,
            setup=setup,
        )


class PledgeFilters(BaseModel):
    project_id: uuid.UUID | None = None
    status: PledgeStatus | None = None
    customer_id: SafeStr | None = Field(None, max_length=100)
    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None


class StatusCount(BaseModel):
    pledges: int
    amount: int


class DailyPoint(BaseModel):
    day: date
    pledges: int = Field(description="Pledged that day and still standing (or paid).")
    amount: int


class ChannelPoint(BaseModel):
    referral_code: str | None
    source: str | None
    pledges: int
    amount: int


class ProjectStats(BaseModel):
    """What the creator's staff watch (the internal target included)."""

    project_id: uuid.UUID
    currency: str
    status: str
    goal: int
    internal_target: int | None
    pledged_amount: int = Field(description="Confirmed pledges now.")
    final_amount: int | None = Field(description="The total locked at the deadline.")
    backers: int
    collected: int
    refunded: int
    payment_fees: int
    by_status: dict[str, StatusCount]
    timezone: str
    daily: list[DailyPoint]
    channels: list[ChannelPoint]
