"""Request and response bodies of project updates."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.crowdfund.updates.repository import UpdateRow
from shared.text import SafeMultilineStr, SafeStr

Visibility = Literal["public", "backers"]


class UpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: SafeStr = Field(min_length=1, max_length=200)
    body: SafeMultilineStr = Field(min_length=1, max_length=20_000)
    visibility: Visibility = Field("public", description="`backers`: only backers read it.")


class UpdateOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    body: str
    visibility: Visibility
    posted_by: str
    created_at: datetime

    @classmethod
    def of(cls, x: UpdateRow) -> UpdateOut:
        return cls(
            id=x.id,
            project_id=x.project_id,
            title=x.title,
            body=x.body,
            visibility=x.visibility,
            posted_by=x.posted_by,
            created_at=x.created_at,
        )
