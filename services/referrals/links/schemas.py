"""Request and response bodies of referral links."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.text import SafeStr

_STRICT = ConfigDict(extra="forbid")
TargetType = Literal["general", "presale", "group", "project"]


class LinkIn(BaseModel):
    model_config = _STRICT

    distributor_id: uuid.UUID
    target_type: TargetType = "general"
    target_id: SafeStr | None = Field(
        None, min_length=1, max_length=100, description="The campaign, group or project."
    )


class LinkOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    code: str
    target_type: TargetType
    target_id: str | None
    share_url: str
    qr_png: str = Field(description="Path of the QR code image (PNG).")
    qr_svg: str = Field(description="Path of the QR code image (SVG).")
    clicks: int
    conversions: int = Field(description="Paid orders attributed through this link.")
    created_at: datetime


class ClickOut(BaseModel):
    code: str
    merchant_id: str
    target_type: TargetType
    target_id: str | None
    bound: bool = Field(description="Whether the caller is now bound to the distributor (锁客).")
