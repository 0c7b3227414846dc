"""Request and response bodies of projects, rewards and stretch goals.

Shapes and ranges are checked here (a 422 ``validation_error`` naming the field); the rules
that relate fields to each other (the deadline, securities, a reward's schedule) are the
service's, each with a stable code of its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from services.crowdfund.projects.repository import ProjectRow, RewardRow, StretchGoalRow
from shared.text import SafeMultilineStr, SafeStr

_STRICT = ConfigDict(extra="forbid")
MAX_AMOUNT = 10**11  # ¥1 billion in fen: above any goal, far below BIGINT
MAX_QUANTITY = 1_000_000
Url = Annotated[SafeStr, Field(min_length=1, max_length=1000)]
Region = Annotated[str, Field(pattern=r"^([A-Z]{2}|\*)$")]
Fee = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]

ProjectStatus = Literal[
    "draft",
    "submitted",
    "rejected",
    "approved",
    "live",
    "succeeded",
    "failed",
    "settled",
    "cancelled",
]
FundingModel = Literal["all_or_nothing", "flexible"]
Category = Literal[
    "technology", "design", "home", "food", "fashion", "games", "publishing", "art", "music",
    "film", "other",
]  # fmt: skip
RewardKind = Literal["tier", "addon"]


class ProjectTerms(BaseModel):
    """The fields staff write (freely on a draft; once approved, not the goal, the schedule
    or the funding model)."""

    model_config = _STRICT

    title: SafeStr = Field(min_length=1, max_length=200)
    story: SafeMultilineStr = Field("", max_length=20_000)
    image_urls: list[Url] = Field(default_factory=list, max_length=20)
    video_urls: list[Url] = Field(default_factory=list, max_length=5)
    category: Category
    goal: StrictInt = Field(ge=1, le=MAX_AMOUNT, description="Minor units.")
    internal_target: StrictInt | None = Field(
        None, ge=1, le=MAX_AMOUNT, description="Staff only: never shown to backers."
    )
    launch_at: AwareDatetime
    deadline_at: AwareDatetime = Field(description="1 to 60 days after the launch.")
    funding_model: FundingModel = Field(
        "all_or_nothing",
        description="`all_or_nothing`: charged only if the goal is reached; `flexible`: "
        "charged at pledge time, the creator keeps what is raised.",
    )
    support_minimum: StrictInt | None = Field(
        None, ge=1, le=MAX_AMOUNT, description="无私支持 (no reward) from this amount; none: off."
    )
    risks: SafeMultilineStr = Field("", max_length=5000)
    delivery_promise: SafeMultilineStr = Field("", max_length=5000)
    no_refund_last_hour: bool = Field(
        False, description="No cancelling or lowering a pledge in the last hour (摩点's rule)."
    )


class ProjectCreate(ProjectTerms):
    currency: SafeStr = Field(max_length=16, description="ISO 4217, e.g. CNY.")
    merchant_id: SafeStr | None = Field(
        None, min_length=1, max_length=100, description="Admins only; staff create for theirs."
    )


class RewardIn(BaseModel):
    model_config = _STRICT

    kind: RewardKind = Field("tier", description="A tier (档位) or an add-on on top of one.")
    title: SafeStr = Field(min_length=1, max_length=200)
    description: SafeMultilineStr = Field("", max_length=5000)
    amount: StrictInt = Field(
        ge=1, le=MAX_AMOUNT, description="A tier's minimum pledge, an add-on's price (per unit)."
    )
    quantity_limit: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)
    per_backer_limit: StrictInt | None = Field(None, ge=1, le=MAX_QUANTITY)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    delivery_month: str | None = Field(None, pattern=r"^20\d\d-(0[1-9]|1[0-2])$")
    shipping_fees: dict[Region, Fee] | None = Field(
        None,
        max_length=250,
        description='Per unit by region (ISO 3166 code, "*" anywhere else); none: not shipped.',
    )


class RewardOut(BaseModel):
    id: uuid.UUID
    kind: RewardKind
    position: int
    title: str
    description: str
    amount: int
    quantity_limit: int | None
    places_left: int | None
    reserved: int
    per_backer_limit: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    delivery_month: str | None
    shipping_fees: dict[str, int] | None

    @classmethod
    def of(cls, x: RewardRow) -> RewardOut:
        return cls(
            id=x.id,
            kind=x.kind,
            position=x.position,
            title=x.title,
            description=x.description,
            amount=x.amount,
            quantity_limit=x.quantity_limit,
            places_left=x.places_left,
            reserved=x.reserved,
            per_backer_limit=x.per_backer_limit,
            starts_at=x.starts_at,
            ends_at=x.ends_at,
            delivery_month=x.delivery_month,
            shipping_fees=x.shipping_fees,
        )


class StretchGoalIn(BaseModel):
    model_config = _STRICT

    threshold: StrictInt = Field(ge=1, le=MAX_AMOUNT, description="Minor units pledged.")
    title: SafeStr = Field(min_length=1, max_length=200)
    unlocks: SafeMultilineStr = Field("", max_length=5000)


class StretchGoalOut(BaseModel):
    id: uuid.UUID
    threshold: int
    title: str
    unlocks: str
    unlocked: bool
    unlocked_at: datetime | None

    @classmethod
    def of(cls, x: StretchGoalRow) -> StretchGoalOut:
        return cls(
            id=x.id,
            threshold=x.threshold,
            title=x.title,
            unlocks=x.unlocks,
            unlocked=x.unlocked_at is not None,
            unlocked_at=x.unlocked_at,
        )


class ProjectOut(BaseModel):
    """A project as its staff (and admins) see it."""

    id: uuid.UUID
    merchant_id: str
    status: ProjectStatus
    suspended: bool
    title: str
    story: str
    image_urls: list[str]
    video_urls: list[str]
    category: str
    currency: str
    goal: int
    internal_target: int | None
    launch_at: datetime
    deadline_at: datetime
    funding_model: FundingModel
    support_minimum: int | None
    risks: str
    delivery_promise: str
    no_refund_last_hour: bool
    platform_fee_bps: int | None
    review_reason: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    pledged_amount: int
    final_amount: int | None
    final_backers: int | None
    decided_at: datetime | None
    rewards: list[RewardOut]
    stretch_goals: list[StretchGoalOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, x: ProjectRow, rewards: list[RewardRow], goals: list[StretchGoalRow]) -> ProjectOut:
        return cls(
            id=x.id,
            merchant_id=x.merchant_id,
            status=x.status,
            suspended=x.suspended,
            title=x.title,
            story=x.story,
            image_urls=x.image_urls,
            video_urls=x.video_urls,
            category=x.category,
            currency=x.currency,
            goal=x.goal,
            internal_target=x.internal_target,
            launch_at=x.launch_at,
            deadline_at=x.deadline_at,
            funding_model=x.funding_model,
            support_minimum=x.support_minimum,
            risks=x.risks,
            delivery_promise=x.delivery_promise,
            no_refund_last_hour=x.no_refund_last_hour,
            platform_fee_bps=x.platform_fee_bps,
            review_reason=x.review_reason,
            reviewed_by=x.reviewed_by,
            reviewed_at=x.reviewed_at,
            pledged_amount=x.pledged_amount,
            final_amount=x.final_amount,
            final_backers=x.final_backers,
            decided_at=x.decided_at,
            rewards=[RewardOut.of(w) for w in rewards],
            stretch_goals=[StretchGoalOut.of(g) for g in goals],
            created_at=x.created_at,
            updated_at=x.updated_at,
        )


class PublicProject(BaseModel):
    """The project page (no login): the story, the terms and the progress."""

    id: uuid.UUID
    title: str
    story: str
    image_urls: list[str]
    video_urls: list[str]
    category: str
    currency: str
    status: ProjectStatus
    suspended: bool
    funding_model: FundingModel
    launch_at: datetime
    deadline_at: datetime
    seconds_left: int = Field(description="Until the deadline; 0 once it is past.")
    goal: int
    raised: int = Field(description="Confirmed pledges; locked at the deadline.")
    percent_bps: int = Field(description="Raised / goal in basis points (may pass 10000).")
    backers: int
    support_minimum: int | None
    risks: str
    delivery_promise: str
    no_refund_last_hour: bool
    rewards: list[RewardOut]
    stretch_goals: list[StretchGoalOut]


class ReviewIn(BaseModel):
    model_config = _STRICT

    reason: SafeStr | None = Field(None, min_length=1, max_length=500)
    platform_fee_bps: StrictInt | None = Field(
        None, ge=0, le=5000, description="Approval only; omitted: the platform's rate."
    )


class RejectIn(BaseModel):
    model_config = _STRICT

    reason: SafeStr = Field(min_length=1, max_length=500, description="Shown to the creator.")
