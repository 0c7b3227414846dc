from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.sessions.schemas import TokenPair
from shared.text import SafeStr


class WeChatLoginIn(BaseModel):
    app_id: SafeStr = Field(min_length=1, max_length=32, description="The mini-program's app id")
    code: SafeStr = Field(min_length=1, max_length=128, description="From wx.login()")
    phone_code: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="From the getPhoneNumber button, to store the customer's phone",
    )


class WeChatLoginOut(TokenPair):
    openid: str = Field(description="The customer's openid in this app (WeChat Pay needs it)")
    unionid: str | None
    new_customer: bool
