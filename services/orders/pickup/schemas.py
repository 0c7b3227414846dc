"""Request and response bodies of pickup leaders, points, pick lists and pickups."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from services.orders.orders.schemas import Phone
from services.orders.pickup.repository import LeaderRow, PointRow
from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")

LeaderStatus = Literal["pending", "active", "rejected", "suspended"]
PickState = Literal["awaiting_arrival", "ready", "picked_up"]


class LeaderApply(BaseModel):
    model_config = _STRICT

    merchant_id: SafeStr = Field(min_length=1, max_length=100)
    real_name: SafeStr = Field(min_length=1, max_length=100)
    phone: Phone


class LeaderOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    user_id: str
    status: LeaderStatus
    real_name: str
    phone: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime

    @classmethod
    def of(cls, x: LeaderRow) -> LeaderOut:
        return cls(
            id=x.id,
            merchant_id=x.merchant_id,
            user_id=x.user_id,
            status=x.status,
            real_name=x.real_name,
            phone=x.phone,
            decided_by=x.decided_by,
            decided_at=x.decided_at,
            decision_note=x.decision_note,
            created_at=x.created_at,
        )


class PointIn(BaseModel):
    """What a leader (or the merchant's staff) may change about a point."""

    model_config = _STRICT

    name: SafeStr = Field(min_length=1, max_length=100)
    address: SafeStr = Field(min_length=1, max_length=300)
    contact_name: SafeStr = Field(min_length=1, max_length=100)
    contact_phone: Phone
    opening_hours: SafeStr = Field(
        min_length=1, max_length=200, description="As customers read it: 周一至周五 9:00-20:00."
    )
    active: StrictBool = Field(True, description="Customers may choose it while it is active.")


class PointCreate(PointIn):
    merchant_id: SafeStr = Field(min_length=1, max_length=100)


class PointOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    leader_id: uuid.UUID
    name: str
    address: str
    contact_name: str
    contact_phone: str
    opening_hours: str
    active: bool
    accepting_orders: bool = Field(description="Active, and its leader is too.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, x: PointRow) -> PointOut:
        return cls(
            id=x.id,
            merchant_id=x.merchant_id,
            leader_id=x.leader_id,
            name=x.name,
            address=x.address,
            contact_name=x.contact_name,
            contact_phone=x.contact_phone,
            opening_hours=x.opening_hours,
            active=x.active,
            accepting_orders=x.accepting_orders,
            created_at=x.created_at,
            updated_at=x.updated_at,
        )


class ArrivalIn(BaseModel):
    model_config = _STRICT

    campaign_id: uuid.UUID


class ArrivalOut(BaseModel):
    pickup_point_id: uuid.UUID
    campaign_id: uuid.UUID
    arrived: int = Field(description="Orders marked arrived now (0 when all had arrived).")


class PickupIn(BaseModel):
    model_config = _STRICT

    code: str = Field(
        min_length=4,
        max_length=8,
        pattern=r"^[A-Za-z0-9]+$",
        description="As the customer shows it.",
    )


class PickOrder(BaseModel):
    """One order as its pickup needs it: no payment, no customer account."""

    order_id: uuid.UUID
    campaign_id: uuid.UUID
    customer: str = Field(description="The customer, masked (ab***yz).")
    sku: str
    quantity: int
    pickup_code: str
    state: PickState
    arrived_at: datetime | None
    picked_up_at: datetime | None


class PickVariant(BaseModel):
    campaign_id: uuid.UUID
    sku: str
    name: str
    quantity: int = Field(description="Units to hand over.")
    orders: int


class PickList(BaseModel):
    pickup_point_id: uuid.UUID
    variants: list[PickVariant]
    orders: list[PickOrder]
