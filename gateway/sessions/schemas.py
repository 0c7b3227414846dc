from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gateway.sessions.service import Tokens
from shared.text import SafeStr


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int = Field(description="Seconds the access token is valid")
    refresh_token: str = Field(description="Exchange it at /v1/auth/refresh; it works once")
    refresh_expires_in: int = Field(description="Seconds the refresh token is valid")
    user_id: str

    @classmethod
    def of(cls, tokens: Tokens) -> TokenPair:
        return cls(
            access_token=tokens.access_token,
            expires_in=tokens.expires_in,
            refresh_token=tokens.refresh_token,
            refresh_expires_in=tokens.refresh_expires_in,
            user_id=tokens.user_id,
        )


class RefreshIn(BaseModel):
    refresh_token: SafeStr = Field(min_length=1, max_length=200)
