"""Request and response bodies of the pre-sale campaign endpoints.

Shapes and ranges are checked here (a 422 ``validation_error`` naming the field); the rules
that relate fields to each other (tiers, deposits, schedule) are the service's, each with a
stable code of its own.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from services.orders.presales.pricing import DepositType
from services.orders.presales.repository import CampaignRow, VariantRow
from shared.text import SafeMultilineStr, SafeStr

_STRICT = ConfigDict(extra="forbid")
MAX_PRICE = 10**10  # ¥100 million in fen: far above any unit price, far below BIGINT
MAX_QUANTITY = 10_000_000
Sku = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

CampaignStatus = Literal[
    "draft", "published", "open", "succeeded", "failed", "fulfilled", "cancelled"
]


class TierIn(BaseModel):
    model_config = _STRICT

    min_quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY, description="Units committed.")
    unit_price: StrictInt = Field(ge=1, le=MAX_PRICE, description="Minor units per unit.")


class VariantIn(BaseModel):
    model_config = _STRICT

    sku: str = Sku
    name: SafeStr = Field(min_length=1, max_length=200)
    capacity: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)


class DepositIn(BaseModel):
    model_config = _STRICT

    type: DepositType = Field(
        description=(
            "`deposit` 定金 (kept if the balance is not paid), `refundable_deposit` 订金 "
            "(always refundable), `inflated_deposit` 定金膨胀 (counts for `unit_credit`), "
            "`full` (the whole price now, no balance step)."
        )
    )
    unit_deposit: StrictInt = Field(0, ge=0, le=MAX_PRICE, description="Per unit; 0 for full.")
    unit_credit: StrictInt | None = Field(
        None, ge=0, le=MAX_PRICE, description="定金膨胀 only: what a unit's deposit counts for."
    )


class EarlyBirdIn(BaseModel):
    model_config = _STRICT

    unit_price: StrictInt = Field(ge=1, le=MAX_PRICE)
    until: AwareDatetime | None = None
    units: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)


class CampaignTerms(BaseModel):
    """The fields staff may change (on a draft freely; later only in buyers' favour)."""

    model_config = _STRICT

    title: SafeStr = Field(min_length=1, max_length=200)
    description: SafeMultilineStr = Field("", max_length=5000)
    image_urls: list[SafeStr] = Field(
        default_factory=list, max_length=20, description="At most 20 URLs of 1,000 characters."
    )
    variants: list[VariantIn] = Field(min_length=1, max_length=50)
    price_tiers: list[TierIn] = Field(min_length=1, max_length=10)
    min_quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY, description="成团量")
    capacity: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)
    per_customer_limit: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    balance_window_hours: StrictInt = Field(72, ge=1, le=24 * 30)
    ships_on: date | None = None
    return_window_days: StrictInt | None = Field(
        None,
        ge=0,
        le=90,
        description="七天无理由退货 days; omitted: the merchant's policy (7), or unchanged.",
    )
    deposit: DepositIn
    early_bird: EarlyBirdIn | None = None


class CampaignCreate(CampaignTerms):
    currency: SafeStr = Field(max_length=16, description="ISO 4217, e.g. CNY.")
    merchant_id: SafeStr | None = Field(
        None, min_length=1, max_length=100, description="Admins only; staff create for theirs."
    )


class TierOut(BaseModel):
    min_quantity: int
    unit_price: int


class VariantOut(BaseModel):
    sku: str
    name: str
    capacity: int | None
    reserved_quantity: int
    committed_quantity: int
    sold_out: bool

    @classmethod
    def of(cls, v: VariantRow) -> VariantOut:
        return cls(
            sku=v.sku,
            name=v.name,
            capacity=v.capacity,
            reserved_quantity=v.reserved_quantity,
            committed_quantity=v.committed_quantity,
            sold_out=v.capacity is not None and v.reserved_quantity >= v.capacity,
        )


class DepositOut(BaseModel):
    type: DepositType
    unit_deposit: int
    unit_credit: int


class EarlyBirdOut(BaseModel):
    unit_price: int
    until: datetime | None
    units: int | None


class CampaignOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    status: CampaignStatus
    paused: bool
    title: str
    description: str
    image_urls: list[str]
    currency: str
    variants: list[VariantOut]
    price_tiers: list[TierOut]
    min_quantity: int
    capacity: int | None
    per_customer_limit: int | None
    opens_at: datetime
    closes_at: datetime
    balance_window_hours: int
    ships_on: date | None
    return_window_days: int
    deposit: DepositOut
    early_bird: EarlyBirdOut | None
    reserved_quantity: int
    committed_quantity: int
    terms_locked: bool
    final_unit_price: int | None
    closed_at: datetime | None
    balance_due_by: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, c: CampaignRow, variants: list[VariantRow]) -> CampaignOut:
        return cls(
            id=c.id,
            merchant_id=c.merchant_id,
            status=c.status,
            paused=c.paused,
            title=c.title,
            description=c.description,
            image_urls=c.image_urls,
            currency=c.currency,
            variants=[VariantOut.of(v) for v in variants],
            price_tiers=[
                TierOut(min_quantity=t.min_quantity, unit_price=t.unit_price) for t in c.tiers
            ],
            min_quantity=c.min_quantity,
            capacity=c.capacity,
            per_customer_limit=c.per_customer_limit,
            opens_at=c.opens_at,
            closes_at=c.closes_at,
            balance_window_hours=c.balance_window_hours,
            ships_on=c.ships_on,
            return_window_days=c.return_window_days,
            deposit=DepositOut(
                type=c.deposit_type, unit_deposit=c.unit_deposit, unit_credit=c.unit_deposit_credit
            ),
            early_bird=None
            if c.early_bird_price is None
            else EarlyBirdOut(
                unit_price=c.early_bird_price, until=c.early_bird_until, units=c.early_bird_units
            ),
            reserved_quantity=c.reserved_quantity,
            committed_quantity=c.committed_quantity,
            terms_locked=c.terms_locked_at is not None,
            final_unit_price=c.final_unit_price,
            closed_at=c.closed_at,
            balance_due_by=c.balance_due_by,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


class PublicProgress(BaseModel):
    """What the mini-program shows on a campaign page (no login)."""

    id: uuid.UUID
    title: str
    description: str
    image_urls: list[str]
    currency: str
    status: CampaignStatus
    paused: bool
    opens_at: datetime
    closes_at: datetime
    seconds_left: int = Field(description="Until the close; 0 once it is past.")
    committed_quantity: int
    buyers: int
    min_quantity: int
    progress_bps: int = Field(description="Committed / minimum in basis points, at most 10000.")
    current_unit_price: int = Field(description="The price of the tier reached so far.")
    next_unit_price: int | None
    units_to_next_tier: int | None
    early_bird: EarlyBirdOut | None
    price_tiers: list[TierOut]
    variants: list[VariantOut]
    sold_out: bool
    deposit: DepositOut
    ships_on: date | None


class Action(BaseModel):
    """The body of a lifecycle action (all optional)."""

    model_config = _STRICT

    reason: SafeStr | None = Field(None, max_length=500)


class MerchantPolicyIn(BaseModel):
    model_config = _STRICT

    return_window_days: StrictInt = Field(
        ge=0, le=90, description="The return window of new campaigns (七天无理由退货: 7)."
    )


class MerchantPolicyOut(BaseModel):
    merchant_id: str
    return_window_days: int
    updated_at: datetime | None
