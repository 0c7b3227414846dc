from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Envelope(BaseModel):
    """What travels between services. ``payload`` is versioned by ``version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str = Field(min_length=1, max_length=100, pattern=r"^[a-z_]+(\.[a-z_]+)+$")
    # Stored in the receiver's inbox (String(100)): a name, nothing the database cannot store.
    source: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    version: int = Field(1, ge=1)
    request_id: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    payload: dict[str, Any]
