"""Response bodies of the distributor app's and the staff's views."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from services.referrals.programs.schemas import Balances


class DailyEarning(BaseModel):
    day: date
    earned: int
    reversed: int


class TeamMember(BaseModel):
    id: uuid.UUID
    name: str = Field(description="Masked.")
    status: str
    joined_at: datetime


class ReferredCustomer(BaseModel):
    customer: str = Field(description="Masked.")
    orders: int
    sales: int = Field(description="Paid minus refunded, minor units.")


class Dashboard(BaseModel):
    distributor_id: uuid.UUID
    balances: Balances
    daily: list[DailyEarning]
    team: list[TeamMember]
    customers: list[ReferredCustomer]


class Rank(BaseModel):
    rank: int
    distributor_id: uuid.UUID
    name: str = Field(description="Masked.")
    value: int = Field(description="Commission earned, or sales brought, in minor units.")


class Leaderboard(BaseModel):
    merchant_id: str
    period: Literal["day", "week", "month"]
    by: Literal["commission", "sales"]
    ranks: list[Rank]


class ProgramDay(BaseModel):
    day: date
    gmv: int = Field(description="Sales brought by distributors (paid minus refunded).")
    commission: int = Field(description="Commission they hold for it.")


class Flag(BaseModel):
    kind: Literal["self_referral", "repeat_payer", "refund_after_completion"]
    customer: str
    distributor_id: uuid.UUID | None
    at: datetime
    source_type: str | None = Field(None, description="The order (or pledge) concerned.")
    source_id: uuid.UUID | None = None
    orders: int | None = Field(None, description="repeat_payer: paid orders in the period.")


class ProgramReport(BaseModel):
    merchant_id: str
    pending_applications: int
    pending_withdrawals: int
    daily: list[ProgramDay]
    flags: list[Flag]
