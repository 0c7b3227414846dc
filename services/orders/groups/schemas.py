"""Request and response bodies of group buys (拼团)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from services.orders.groups.repository import GroupRow, MemberRow, OfferRow
from services.orders.orders.schemas import OrderCreate, OrderOut
from services.orders.presales.schemas import MAX_PRICE, Sku
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")
MIN_GROUP_SIZE, MAX_GROUP_SIZE = 2, 100
MAX_TIME_LIMIT_MINUTES = 7 * 24 * 60

GroupStatus = Literal["open", "formed", "failed", "virtually_formed"]


class GroupPriceIn(BaseModel):
    model_config = _STRICT

    sku: str = Sku
    unit_price: StrictInt = Field(
        ge=1, le=MAX_PRICE, description="Minor units per unit in a group: at most the list price."
    )
    leader_unit_price: StrictInt | None = Field(
        None, ge=1, le=MAX_PRICE, description="团长价: the opener's price, below `unit_price`."
    )


class OfferIn(BaseModel):
    """A campaign's group buying terms (after the first payment: only in buyers' favour)."""

    model_config = _STRICT

    group_size: StrictInt = Field(
        ge=MIN_GROUP_SIZE, le=MAX_GROUP_SIZE, description="N: the paid members that form a group."
    )
    time_limit_minutes: StrictInt = Field(
        ge=5,
        le=MAX_TIME_LIMIT_MINUTES,
        description="From opening to the deadline (never past the campaign's close).",
    )
    prices: list[GroupPriceIn] = Field(
        min_length=1, max_length=50, description="One per variant of the campaign."
    )
    multiple_groups: StrictBool = Field(
        False, description="Whether a customer may be in more than one group of the campaign."
    )
    virtual_completion: StrictBool = Field(
        False,
        description="虚拟成团: a group short of N at its deadline completes with its paid members.",
    )


class GroupPriceOut(BaseModel):
    sku: str
    unit_price: int
    leader_unit_price: int | None


class OfferOut(BaseModel):
    campaign_id: uuid.UUID
    group_size: int
    time_limit_minutes: int
    prices: list[GroupPriceOut]
    multiple_groups: bool
    virtual_completion: bool
    updated_at: datetime

    @classmethod
    def of(cls, x: OfferRow) -> OfferOut:
        return cls(
            campaign_id=x.campaign_id,
            group_size=x.group_size,
            time_limit_minutes=x.time_limit_minutes,
            prices=[
                GroupPriceOut(
                    sku=p.sku, unit_price=p.unit_price, leader_unit_price=p.leader_unit_price
                )
                for p in x.prices
            ],
            multiple_groups=x.multiple_groups,
            virtual_completion=x.virtual_completion,
            updated_at=x.updated_at,
        )


class GroupOrderIn(OrderCreate):
    """An order into a group: the order's fields, and how the member shows on the group page."""

    display_name: SafeStr = Field(
        min_length=1, max_length=50, description="As the client gives it."
    )
    avatar_url: SafeStr | None = Field(
        None, max_length=1000, pattern=r"^https?://", description="As the client gives it."
    )


class MemberOut(BaseModel):
    display_name: str
    avatar_url: str | None
    leader: bool
    paid: bool
    joined_at: datetime

    @classmethod
    def of(cls, x: MemberRow) -> MemberOut:
        return cls(
            display_name=x.display_name,
            avatar_url=x.avatar_url,
            leader=x.leader,
            paid=x.status == "paid",
            joined_at=x.created_at,
        )


class GroupOut(BaseModel):
    """A group as anyone holding its code sees it (no login): no customer ids."""

    code: str
    share_url: str
    campaign_id: uuid.UUID
    status: GroupStatus
    size: int
    places_left: int = Field(description="Places not held by a paid or a paying member.")
    paid_members: int
    expires_at: datetime
    seconds_left: int = Field(description="Until the deadline while open; 0 otherwise.")
    settled_at: datetime | None = Field(description="When it formed, failed or completed.")
    members: list[MemberOut] = Field(description="Members holding a place, in joining order.")

    @classmethod
    def of(
        cls, x: GroupRow, members: list[MemberRow], *, share_base: str, now: datetime
    ) -> GroupOut:
        is_open = x.status == "open"
        return cls(
            code=x.code,
            share_url=f"{share_base}{x.code}",
            campaign_id=x.campaign_id,
            status=x.status,
            size=x.size,
            places_left=x.size - x.places_taken if is_open else 0,
            paid_members=x.paid_members,
            expires_at=x.expires_at,
            seconds_left=max(0, int((x.expires_at - now).total_seconds())) if is_open else 0,
            settled_at=x.settled_at,
            members=[MemberOut.of(y) for y in members],
        )


class GroupOrderOut(BaseModel):
    """The order placed into a group (with the payment to complete) and the group to share."""

    order: OrderOut
    group: GroupOut
