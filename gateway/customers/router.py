"""Customers sign in from a WeChat mini-program."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.config import GatewaySettings
from gateway.customers import service
from gateway.customers.schemas import WeChatLoginIn, WeChatLoginOut
from gateway.sessions import service as sessions
from gateway.sessions.schemas import TokenPair
from gateway.store import IdentitySession, IdentityStoreMissing
from gateway.wechat import (
    UnknownMiniProgram,
    WeChatClient,
    WeChatCodeInvalid,
    WeChatCodeUsed,
    WeChatCredentialsRejected,
    WeChatPhoneCodeInvalid,
    WeChatRateLimited,
    WeChatUnavailable,
    WeChatUserBlocked,
)
from shared.errors import responses

router = APIRouter(prefix="/v1/auth", tags=["identity"])


@router.post(
    "/wechat-mini-program",
    response_model=WeChatLoginOut,
    summary="Sign a customer in with the code of wx.login (and the phone button's code)",
    responses=responses(
        UnknownMiniProgram,
        WeChatCodeInvalid,
        WeChatCodeUsed,
        WeChatPhoneCodeInvalid,
        WeChatUserBlocked,
        WeChatRateLimited,
        WeChatCredentialsRejected,
        WeChatUnavailable,
        IdentityStoreMissing,
    ),
)
async def wechat_mini_program(
    body: WeChatLoginIn, request: Request, session: IdentitySession
) -> WeChatLoginOut:
    # WeChat is asked first: no database connection is held while it answers (the
    # session's transaction takes a connection at its first statement).
    wechat: WeChatClient = request.app.state.wechat
    account = await wechat.code_to_session(body.app_id, body.code)
    phone = await wechat.phone_number(body.app_id, body.phone_code) if body.phone_code else None
    signed = await service.sign_in(session, app_id=body.app_id, wechat=account, phone=phone)
    settings: GatewaySettings = request.app.state.settings
    tokens = await sessions.open_session(
        session,
        request.app.state.token_issuer,
        sessions.Grant(subject=signed.customer_id, kind="customer"),
        refresh_ttl=settings.refresh_token_ttl_seconds,
    )
    return WeChatLoginOut(
        **TokenPair.of(tokens).model_dump(),
        openid=account.openid,
        unionid=account.unionid,
        new_customer=signed.created,
    )
