"""A small fake of WeChat's mini-program API, for the embedded default and the tests.

    uvicorn qunbuy.fake_wechat:create_app --factory     (FAKE_WECHAT_APPS="appid=secret,...")

No fake of WeChat exists on PyPI, so this one serves the three endpoints the gateway calls,
with WeChat's answers (HTTP 200 and an ``errcode``):

- ``GET /sns/jscode2session``: a login code works once (40163 when reused), for five minutes
  (40029 after, as for a code never issued); the app id and secret must match (40013, 40125).
- ``POST /cgi-bin/stable_token``: the app's access token (7200 s), a new one on
  ``force_refresh``.
- ``POST /wxa/business/getuserphonenumber?access_token=``: a phone code, once (40029).

What a phone would do is done through ``/fake/...``: ``POST /fake/login-codes`` gives the code
``wx.login`` would (for a chosen or new openid, with a unionid or without),
``POST /fake/phone-codes`` the code of the phone-number button, and ``PUT /fake/state`` makes
WeChat down (HTTP 503) or rate-limiting (45011). State lives in memory.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

__all__ = ["FakeWeChat", "create_app"]

CODE_TTL_SECONDS = 300
TOKEN_TTL_SECONDS = 7200


@dataclass
class _Code:
    app_id: str
    value: dict[str, Any]
    expires_at: float
    used: bool = False


@dataclass
class FakeWeChat:
    apps: dict[str, str]
    down: bool = False
    rate_limited: bool = False
    login_codes: dict[str, _Code] = field(default_factory=dict)
    phone_codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> app id
    session_keys: list[str] = field(default_factory=list)  # every one given out
    serial: itertools.count[int] = field(default_factory=itertools.count)


class LoginCodeIn(BaseModel):
    appid: str
    openid: str | None = None
    unionid: str | None = None
    expires_in: int = Field(CODE_TTL_SECONDS, ge=-3600, le=86400)


class PhoneCodeIn(BaseModel):
    appid: str
    phone: str = Field(pattern=r"^[0-9]{5,20}$")
    country_code: str = Field("86", pattern=r"^[0-9]{1,4}$")
    expires_in: int = Field(CODE_TTL_SECONDS, ge=-3600, le=86400)


class StateIn(BaseModel):
    down: bool = False
    rate_limited: bool = False


def _error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


def _take(codes: dict[str, _Code], code: str, app_id: str) -> _Code | JSONResponse:
    found = codes.get(code)
    if found is None or found.app_id != app_id or found.expires_at < time.time():
        return _error(40029, "invalid code")
    if found.used:
        return _error(40163, "code been used")
    found.used = True
    return found


def create_app(apps: dict[str, str] | None = None) -> FastAPI:
    if apps is None:
        pairs = os.environ.get("FAKE_WECHAT_APPS", "").split(",")
        apps = dict(p.split("=", 1) for p in pairs if "=" in p)
    state = FakeWeChat(apps=apps)
    app = FastAPI(title="Fake WeChat API (development and tests)")
    app.state.fake = state

    @app.middleware("http")
    async def outage(request: Request, call_next: Any) -> Response:
        if request.url.path.startswith("/fake/") or request.url.path == "/healthz":
            return await call_next(request)  # type: ignore[no-any-return]
        if state.down:
            return PlainTextResponse("service unavailable", status_code=503)
        if state.rate_limited:
            return _error(45011, "api minute-quota reach limit")
        return await call_next(request)  # type: ignore[no-any-return]

    def credentials_error(app_id: str, secret: str) -> JSONResponse | None:
        if app_id not in state.apps:
            return _error(40013, "invalid appid")
        if not secrets.compare_digest(state.apps[app_id], secret):
            return _error(40125, "invalid appsecret")
        return None

    @app.get("/sns/jscode2session")
    async def jscode2session(appid: str, secret: str, js_code: str, grant_type: str) -> Any:
        refused = credentials_error(appid, secret)
        if refused is not None:
            return refused
        if grant_type != "authorization_code":
            return _error(40002, "invalid grant_type")
        taken = _take(state.login_codes, js_code, appid)
        if isinstance(taken, JSONResponse):
            return taken
        session_key = secrets.token_urlsafe(16)
        state.session_keys.append(session_key)
        return {**taken.value, "session_key": session_key}

    @app.post("/cgi-bin/stable_token")
    async def stable_token(body: dict[str, Any]) -> Any:
        app_id, secret = str(body.get("appid", "")), str(body.get("secret", ""))
        refused = credentials_error(app_id, secret)
        if refused is not None:
            return refused
        current = [t for t, a in state.tokens.items() if a == app_id]
        if current and not body.get("force_refresh"):
            return {"access_token": current[0], "expires_in": TOKEN_TTL_SECONDS}
        for old in current:
            del state.tokens[old]
        token = f"fake_token_{next(state.serial)}_{secrets.token_hex(8)}"
        state.tokens[token] = app_id
        return {"access_token": token, "expires_in": TOKEN_TTL_SECONDS}

    @app.post("/wxa/business/getuserphonenumber")
    async def phone_number(access_token: str, body: dict[str, Any]) -> Any:
        app_id = state.tokens.get(access_token)
        if app_id is None:
            return _error(40001, "invalid credential, access_token is invalid or not latest")
        taken = _take(state.phone_codes, str(body.get("code", "")), app_id)
        if isinstance(taken, JSONResponse):
            return taken
        return {"errcode": 0, "errmsg": "ok", "phone_info": taken.value}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/fake/login-codes")
    async def login_code(body: LoginCodeIn) -> dict[str, str]:
        openid = body.openid or f"o{secrets.token_urlsafe(20)}"
        value: dict[str, Any] = {"openid": openid}
        if body.unionid:
            value["unionid"] = body.unionid
        code = secrets.token_urlsafe(24)
        state.login_codes[code] = _Code(body.appid, value, time.time() + body.expires_in)
        return {"code": code, "openid": openid}

    @app.post("/fake/phone-codes")
    async def phone_code(body: PhoneCodeIn) -> dict[str, str]:
        value = {
            "phoneNumber": f"+{body.country_code} {body.phone}",
            "purePhoneNumber": body.phone,
            "countryCode": body.country_code,
            "watermark": {"appid": body.appid, "timestamp": int(time.time())},
        }
        code = secrets.token_urlsafe(24)
        state.phone_codes[code] = _Code(body.appid, value, time.time() + body.expires_in)
        return {"code": code}

    @app.put("/fake/state")
    async def set_state(body: StateIn) -> StateIn:
        state.down, state.rate_limited = body.down, body.rate_limited
        return body

    @app.post("/fake/revoke-tokens")
    async def revoke_tokens() -> dict[str, int]:
        count = len(state.tokens)
        state.tokens.clear()
        return {"revoked": count}

    return app
