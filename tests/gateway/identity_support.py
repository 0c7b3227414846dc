"""Helpers of the identity tests: the fake WeChat's codes, sign-ins, merchants and staff."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from qunbuy.fake_wechat import FakeWeChat

APPS = {"wxtest0000000001": "test-secret-one", "wxtest0000000002": "test-secret-two"}
APP, OTHER_APP = list(APPS)
PASSWORD = "correct horse battery"


@dataclass
class Fake:
    url: str
    state: FakeWeChat

    async def login_code(
        self,
        app_id: str = APP,
        *,
        openid: str | None = None,
        unionid: str | None = None,
        expires_in: int = 300,
    ) -> str:
        body = {"appid": app_id, "openid": openid, "unionid": unionid, "expires_in": expires_in}
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post("/fake/login-codes", json=body)
        response.raise_for_status()
        return str(response.json()["code"])

    async def phone_code(self, phone: str, app_id: str = APP) -> str:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post(
                "/fake/phone-codes", json={"appid": app_id, "phone": phone}
            )
        response.raise_for_status()
        return str(response.json()["code"])

    async def set_state(self, *, down: bool = False, rate_limited: bool = False) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.put(
                "/fake/state", json={"down": down, "rate_limited": rate_limited}
            )
        response.raise_for_status()


def openid() -> str:
    return f"o_{uuid.uuid4().hex}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wechat_login(
    gw: httpx.AsyncClient, code: str, *, app_id: str = APP, phone_code: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"app_id": app_id, "code": code}
    if phone_code is not None:
        body["phone_code"] = phone_code
    return await gw.post("/v1/auth/wechat-mini-program", json=body)


def email() -> str:
    return f"staff-{uuid.uuid4().hex[:12]}@example.com"


@dataclass
class Member:
    id: str
    merchant_id: str
    login: str
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access)


async def accept(gw: httpx.AsyncClient, invitation: dict[str, Any]) -> dict[str, Any]:
    response = await gw.post(
        "/v1/auth/accept-invitation",
        json={"invitation_token": invitation["invitation_token"], "password": PASSWORD},
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


async def merchant_with_owner(gw: httpx.AsyncClient, admin: dict[str, str]) -> Member:
    """A new merchant whose owner has accepted the invitation and is signed in."""
    login = email()
    created = await gw.post(
        "/v1/merchants",
        json={
            "name": f"Merchant {uuid.uuid4().hex[:6]}",
            "owner": {"name": "Owner", "email": login},
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    tokens = await accept(gw, created.json()["owner_invitation"])
    return Member(
        id=tokens["user_id"],
        merchant_id=created.json()["id"],
        login=login,
        access=tokens["access_token"],
        refresh=tokens["refresh_token"],
    )


async def invite(
    gw: httpx.AsyncClient, owner: Member, role: str, *, login: str | None = None
) -> Member:
    login = login or email()
    invited = await gw.post(
        "/v1/staff",
        json={"name": role.title(), "email": login, "role": role},
        headers=owner.headers,
    )
    assert invited.status_code == 201, invited.text
    tokens = await accept(gw, invited.json()["invitation"])
    return Member(
        id=tokens["user_id"],
        merchant_id=owner.merchant_id,
        login=login,
        access=tokens["access_token"],
        refresh=tokens["refresh_token"],
    )
