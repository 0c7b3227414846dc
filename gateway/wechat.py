"""WeChat's mini-program API, as the gateway uses it: jscode2session, stable_token and
getuserphonenumber.

The base URL is configurable (``WECHAT_API_BASE``): the embedded default and the tests point it
at the fake server in ``qunbuy/fake_wechat.py``. WeChat answers HTTP 200 with an ``errcode``
for most failures; each one the caller can act on becomes a problem+json code here. The app's
access token (``stable_token``) is cached per process until shortly before it expires, and
fetched again (``force_refresh``) when WeChat says it is no longer valid.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from shared.errors import BadRequest, DomainError, Forbidden, NotFound

__all__ = [
    "PhoneNumber",
    "WeChatClient",
    "WeChatCodeInvalid",
    "WeChatCodeUsed",
    "WeChatCredentialsRejected",
    "WeChatPhoneCodeInvalid",
    "WeChatRateLimited",
    "WeChatSession",
    "WeChatUnavailable",
    "WeChatUserBlocked",
]

_log = structlog.get_logger("qunbuy.wechat")


class UnknownMiniProgram(NotFound):
    code = "unknown_mini_program"
    title = "No mini-program with this app id is configured"


class WeChatCodeInvalid(BadRequest):
    code = "wechat_code_invalid"
    title = "The login code is not valid (wrong, or older than five minutes); call wx.login again"


class WeChatCodeUsed(BadRequest):
    code = "wechat_code_used"
    title = "The login code was already used; call wx.login again"


class WeChatPhoneCodeInvalid(BadRequest):
    code = "wechat_phone_code_invalid"
    title = "The phone number code is not valid, expired or was already used"


class WeChatRateLimited(DomainError):
    status = 429
    code = "wechat_rate_limited"
    title = "WeChat is limiting requests; try again shortly"
    retry_after = 10


class WeChatUserBlocked(Forbidden):
    code = "wechat_user_blocked"
    title = "WeChat refuses this user (a high-risk account)"


class WeChatUnavailable(DomainError):
    status = 503
    code = "wechat_unavailable"
    title = "WeChat did not answer; try again shortly"
    retry_after = 5


class WeChatCredentialsRejected(DomainError):
    status = 502
    code = "wechat_credentials_rejected"
    title = "WeChat refused this mini-program's app id or secret (the platform's configuration)"


@dataclass(frozen=True, slots=True)
class WeChatSession:
    openid: str
    unionid: str | None
    session_key: str


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    number: str  # without the country code
    country_code: str


# errcodes: https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/ (user-login, phone)
_RATE_LIMITED = 45011
_BLOCKED = 40226
_CODE_INVALID = 40029
_CODE_USED = 40163
_TOKEN_INVALID = frozenset({40001, 40014, 42001})
_CREDENTIALS = frozenset({40013, 40125, 41002, 41004, 40164})
_TOKEN_MARGIN = 300.0


class WeChatClient:
    def __init__(self, base_url: str, apps: dict[str, str], *, timeout: float) -> None:
        self.apps = apps
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False
        )
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self._http.aclose()

    def _secret(self, app_id: str) -> str:
        secret = self.apps.get(app_id)
        if secret is None:
            raise UnknownMiniProgram()
        return secret

    async def code_to_session(self, app_id: str, code: str) -> WeChatSession:
        params = {
            "appid": app_id,
            "secret": self._secret(app_id),
            "js_code": code,
            "grant_type": "authorization_code",
        }
        body = await self._call("GET", "/sns/jscode2session", params=params)
        errcode = body.get("errcode") or 0
        if errcode == _CODE_INVALID:
            raise WeChatCodeInvalid()
        if errcode == _CODE_USED:
            raise WeChatCodeUsed()
        self._raise_common(errcode, body)
        openid, session_key = body.get("openid"), body.get("session_key")
        unionid = body.get("unionid")
        if not isinstance(openid, str) or not isinstance(session_key, str):
            raise WeChatUnavailable("WeChat's answer had no openid")
        return WeChatSession(
            openid=openid,
            unionid=unionid if isinstance(unionid, str) and unionid else None,
            session_key=session_key,
        )

    async def phone_number(self, app_id: str, code: str) -> PhoneNumber:
        for attempt in (1, 2):
            token = await self._access_token(app_id, force=attempt == 2)
            body = await self._call(
                "POST",
                "/wxa/business/getuserphonenumber",
                params={"access_token": token},
                json={"code": code},
            )
            errcode = body.get("errcode") or 0
            if errcode in _TOKEN_INVALID and attempt == 1:
                continue  # revoked or expired early: fetch a fresh one, once
            if errcode in (_CODE_INVALID, _CODE_USED):
                raise WeChatPhoneCodeInvalid()
            self._raise_common(errcode, body)
            info = body.get("phone_info") or {}
            number, country = info.get("purePhoneNumber"), info.get("countryCode")
            if not isinstance(number, str) or not isinstance(country, str):
                raise WeChatUnavailable("WeChat's answer had no phone number")
            return PhoneNumber(number=number, country_code=country)
        raise WeChatCredentialsRejected("WeChat refused a fresh access token")

    async def _access_token(self, app_id: str, *, force: bool) -> str:
        lock = self._token_locks.setdefault(app_id, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(app_id)
            if cached is not None and not force and cached[1] > time.monotonic():
                return cached[0]
            body = await self._call(
                "POST",
                "/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": app_id,
                    "secret": self._secret(app_id),
                    "force_refresh": force,
                },
            )
            self._raise_common(body.get("errcode") or 0, body)
            token, expires_in = body.get("access_token"), body.get("expires_in")
            if not isinstance(token, str) or not isinstance(expires_in, int):
                raise WeChatUnavailable("WeChat's answer had no access token")
            self._tokens[app_id] = (token, time.monotonic() + expires_in - _TOKEN_MARGIN)
            return token

    @staticmethod
    def _raise_common(errcode: Any, body: dict[str, Any]) -> None:
        if errcode == 0:
            return
        if errcode == _RATE_LIMITED:
            raise WeChatRateLimited()
        if errcode == _BLOCKED:
            raise WeChatUserBlocked()
        if errcode in _CREDENTIALS or errcode in _TOKEN_INVALID:
            _log.error("wechat_credentials_rejected", errcode=errcode)
            raise WeChatCredentialsRejected()
        _log.warning("wechat_error", errcode=errcode, errmsg=str(body.get("errmsg"))[:200])
        raise WeChatUnavailable(f"WeChat answered errcode {errcode}")

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _log.warning("wechat_unreachable", path=path, error=type(exc).__name__)
            raise WeChatUnavailable() from exc
        if response.status_code != 200:
            raise WeChatUnavailable(f"WeChat answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise WeChatUnavailable("WeChat's answer was not JSON") from exc
        if not isinstance(body, dict):
            raise WeChatUnavailable("WeChat's answer was not a JSON object")
        return body
