"""Request and response bodies of gifts (送人): claiming, the views of a gift, the terms."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from services.orders.orders.schemas import DeliveryAddress, OrderStatus

_STRICT = ConfigDict(extra="forbid")

GiftStatus = Literal["awaiting_claim", "claimed", "redirected", "refunded"]
OnUnclaimed = Literal["redirect", "refund"]
ClaimToken = Annotated[
    str,
    Field(
        min_length=16,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The `token` of the claim link.",
    ),
]


class ClaimLookup(BaseModel):
    """The token travels in a body, not a path: paths are logged, a claim link is a secret."""

    model_config = _STRICT

    token: ClaimToken


class ClaimIn(ClaimLookup):
    address: DeliveryAddress = Field(description="The recipient's own: the buyer never sees it.")


class GiftPreview(BaseModel):
    """What the claim link's page shows before the recipient claims."""

    message: str
    campaign_id: uuid.UUID
    title: str
    sku: str
    quantity: int
    status: GiftStatus
    claimable: bool = Field(description="Paid, unclaimed and not redirected or refunded.")
    claim_by: datetime


class GiftOut(BaseModel):
    """A gift as its viewer may see it: the buyer never sees the recipient or their address;
    the recipient sees where and how it ships; staff see everything needed to ship it."""

    order_id: uuid.UUID
    message: str
    status: GiftStatus
    claimed: bool
    on_unclaimed: OnUnclaimed = Field(description="What happens if nobody claims it in time.")
    claim_by: datetime = Field(description="Unclaimed then, it is redirected or refunded.")
    claimed_at: datetime | None
    order_status: OrderStatus
    shipped_at: datetime | None
    delivered_at: datetime | None
    claim_url: str | None = Field(
        None, description="The buyer's, once the order is paid and until the gift is claimed."
    )
    carrier: str | None
    tracking_number: str | None
    ship_to: DeliveryAddress | None = Field(
        None, description="The recipient's and staff's; the buyer's own once redirected."
    )
    recipient_id: str | None = Field(None, description="Staff only.")


class GiftPolicyIn(BaseModel):
    model_config = _STRICT

    claim_days: StrictInt = Field(ge=1, le=90, description="From ordering until unclaimed.")
    on_unclaimed: OnUnclaimed = Field(
        description="`redirect`: ship to the buyer's own address (refunded without one); "
        "`refund`: everything paid goes back."
    )


class GiftPolicyOut(GiftPolicyIn):
    merchant_id: str
    updated_at: datetime | None
