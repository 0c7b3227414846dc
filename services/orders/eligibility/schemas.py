"""Request and response bodies of eligibility: member tiers and memberships, a campaign's
eligibility, purchase codes, reservations and their draw."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from services.orders.eligibility.repository import CodeRow, ReservationRow, TierRow
from services.orders.presales.schemas import MAX_PRICE, MAX_QUANTITY
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")
TIER_CODE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MAX_TIERS = 20
MAX_CODES_PER_BATCH = 10_000
Mode = Literal["open", "tiers", "code"]
CodeStatus = Literal["issued", "redeemed", "used", "expired"]
CustomerId = Annotated[SafeStr, Field(min_length=1, max_length=100)]
TierCode = Annotated[str, Field(min_length=1, max_length=32, pattern=TIER_CODE)]


class TierIn(BaseModel):
    model_config = _STRICT

    code: TierCode
    name: SafeStr = Field(min_length=1, max_length=100, description="普通, 银卡, 金卡…")
    rank: StrictInt = Field(ge=0, le=1000, description="Higher is better.")


class TiersIn(BaseModel):
    model_config = _STRICT

    tiers: list[TierIn] = Field(
        max_length=MAX_TIERS, description="The whole list: tiers left out are deleted."
    )


class TierOut(BaseModel):
    code: str
    name: str
    rank: int

    @classmethod
    def of(cls, x: TierRow) -> TierOut:
        return cls(code=x.code, name=x.name, rank=x.rank)


class TiersOut(BaseModel):
    merchant_id: str
    tiers: list[TierOut]


class MemberIn(BaseModel):
    model_config = _STRICT

    tier_code: TierCode | None = Field(description="One of the merchant's tiers; null: none.")


class MemberOut(BaseModel):
    merchant_id: str
    customer_id: str
    tier_code: str | None
    set_at: datetime | None
    set_by: str | None


class TierRuleIn(BaseModel):
    model_config = _STRICT

    tier_code: TierCode
    per_customer_limit: StrictInt | None = Field(
        None, ge=1, le=MAX_QUANTITY, description="Units one customer of this tier may hold."
    )
    unit_price: StrictInt | None = Field(
        None, ge=1, le=MAX_PRICE, description="The most this tier pays per unit (minor units)."
    )


class ReservationsIn(BaseModel):
    model_config = _STRICT

    places: StrictInt = Field(ge=1, le=MAX_QUANTITY, description="Purchase rights to draw.")
    code_valid_hours: StrictInt = Field(
        24, ge=1, le=24 * 30, description="A winner's code lasts this long after the opening."
    )


class EligibilityIn(BaseModel):
    model_config = _STRICT

    mode: Mode = Field(
        description="`open` to all, `tiers` (member tiers listed), `code` (a purchase code)."
    )
    tiers: list[TierRuleIn] = Field(default_factory=list, max_length=MAX_TIERS)
    units_per_code: StrictInt = Field(
        1, ge=1, le=10_000, description="`code`: the units one code's order may hold."
    )
    reservations: ReservationsIn | None = Field(
        None, description="`code`: reservations before the opening, drawn by lottery."
    )


class TierRuleOut(BaseModel):
    tier_code: str
    name: str
    per_customer_limit: int | None
    unit_price: int | None


class ReservationsOut(BaseModel):
    places: int
    code_valid_hours: int
    close_at: datetime = Field(description="The opening (or the draw, if staff run it earlier).")
    reserved: int
    commitment: str = Field(description="sha256 of the seed the draw will reveal (hex).")
    drawn_at: datetime | None


class EligibilityOut(BaseModel):
    campaign_id: uuid.UUID
    mode: Mode
    tiers: list[TierRuleOut]
    units_per_code: int
    reservations: ReservationsOut | None


class CodeBatchIn(BaseModel):
    model_config = _STRICT

    count: StrictInt | None = Field(
        None, ge=1, le=MAX_CODES_PER_BATCH, description="Codes for anyone who redeems them."
    )
    customer_ids: list[CustomerId] | None = Field(
        None, min_length=1, max_length=MAX_CODES_PER_BATCH, description="A code bound to each."
    )
    expires_at: AwareDatetime


class IssuedCode(BaseModel):
    id: uuid.UUID
    code: str = Field(description="Shown this once: only its hash is kept.")
    customer_id: str | None


class CodeBatchOut(BaseModel):
    batch_id: uuid.UUID
    campaign_id: uuid.UUID
    expires_at: datetime
    codes: list[IssuedCode]


class RedeemIn(BaseModel):
    model_config = _STRICT

    code: SafeStr = Field(min_length=1, max_length=32, description="Case and dashes are free.")


class CodeOut(BaseModel):
    id: uuid.UUID
    campaign_id: uuid.UUID
    batch_id: uuid.UUID
    source: Literal["batch", "lottery"]
    hint: str = Field(description="The code's last four characters.")
    customer_id: str | None
    status: CodeStatus
    expires_at: datetime
    order_id: uuid.UUID | None
    redeemed_at: datetime | None
    used_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, x: CodeRow, now: datetime) -> CodeOut:
        expired = x.status != "used" and x.expires_at <= now
        return cls(
            id=x.id,
            campaign_id=x.campaign_id,
            batch_id=x.batch_id,
            source=x.source,
            hint=x.hint,
            customer_id=x.customer_id,
            status="expired" if expired else x.status,
            expires_at=x.expires_at,
            order_id=x.order_id,
            redeemed_at=x.redeemed_at,
            used_at=x.used_at,
            created_at=x.created_at,
        )


class ReservationOut(BaseModel):
    id: uuid.UUID = Field(description="The entry of the draw (see GET …/draw/entries).")
    campaign_id: uuid.UUID
    status: Literal["reserved", "won", "not_drawn"]
    rank: int | None
    ticket: str | None
    code: CodeOut | None = Field(description="A winner's code (orders use it by themselves).")
    created_at: datetime

    @classmethod
    def of(cls, x: ReservationRow, code: CodeOut | None) -> ReservationOut:
        return cls(
            id=x.id,
            campaign_id=x.campaign_id,
            status=x.status,
            rank=x.rank,
            ticket=x.ticket,
            code=code,
            created_at=x.created_at,
        )


class DrawOut(BaseModel):
    """Everything needed to check a draw (services/orders/eligibility/lottery.py)."""

    campaign_id: uuid.UUID
    status: Literal["pending", "drawn"]
    places: int
    entries: int
    winners: int | None
    commitment: str
    seed: str | None = Field(description="Revealed by the draw.")
    digest: str | None = Field(description="sha256 of the entries' ids, sorted, one per line.")
    drawn_at: datetime | None
    algorithm: str


class EntryOut(BaseModel):
    reservation_id: uuid.UUID
    ticket: str
    rank: int
    won: bool
