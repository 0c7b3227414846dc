"""Customers sign in from a mini-program, against the fake WeChat server (never WeChat)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.conftest import running
from tests.gateway.identity_support import APP, OTHER_APP, Fake, bearer, openid, wechat_login
from tests.helpers import free_port


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def test_a_new_customer_gets_tokens_and_their_openid(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    who = openid()
    response = await wechat_login(gw, await wechat.login_code(openid=who))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["openid"] == who
    assert body["new_customer"] is True
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"]
    me = await gw.get("/v1/me", headers=bearer(body["access_token"]))
    assert me.json()["user_id"] == body["user_id"]
    assert me.json()["roles"] == ["customer"]
    assert me.json()["mini_programs"] == [APP]


async def test_the_session_key_never_leaves_the_server(gw: httpx.AsyncClient, wechat: Fake) -> None:
    response = await wechat_login(gw, await wechat.login_code())
    assert response.status_code == 200
    me = await gw.get("/v1/me", headers=bearer(response.json()["access_token"]))
    given_out = wechat.state.session_keys[-1]
    assert given_out not in response.text
    assert given_out not in me.text
    assert "session_key" not in response.text


async def test_a_returning_customer_is_the_same_customer(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    who = openid()
    first = await wechat_login(gw, await wechat.login_code(openid=who))
    again = await wechat_login(gw, await wechat.login_code(openid=who))
    assert again.status_code == 200
    assert again.json()["user_id"] == first.json()["user_id"]
    assert again.json()["new_customer"] is False


async def test_unionid_links_the_same_person_across_two_apps(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    unionid = f"u_{openid()}"
    in_one = await wechat_login(gw, await wechat.login_code(APP, unionid=unionid))
    in_other = await wechat_login(
        gw, await wechat.login_code(OTHER_APP, unionid=unionid), app_id=OTHER_APP
    )
    assert in_other.status_code == 200, in_other.text
    assert in_other.json()["user_id"] == in_one.json()["user_id"]
    assert in_other.json()["openid"] != in_one.json()["openid"]
    assert in_other.json()["new_customer"] is False
    me = await gw.get("/v1/me", headers=bearer(in_other.json()["access_token"]))
    assert me.json()["mini_programs"] == [APP, OTHER_APP]
    # Without a unionid, another app's account is another customer.
    alone = await wechat_login(gw, await wechat.login_code(OTHER_APP), app_id=OTHER_APP)
    assert alone.json()["user_id"] != in_one.json()["user_id"]


async def test_two_first_sign_ins_at_once_make_one_customer(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    who = openid()
    codes = [await wechat.login_code(openid=who) for _ in range(4)]
    answers = await asyncio.gather(*(wechat_login(gw, code) for code in codes))
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.json()["user_id"] for a in answers}) == 1
    assert sum(a.json()["new_customer"] for a in answers) == 1


async def test_a_reused_code_is_refused(gw: httpx.AsyncClient, wechat: Fake) -> None:
    code = await wechat.login_code()
    assert (await wechat_login(gw, code)).status_code == 200
    problem(await wechat_login(gw, code), 400, "wechat_code_used")


async def test_an_expired_or_unknown_code_is_refused(gw: httpx.AsyncClient, wechat: Fake) -> None:
    problem(
        await wechat_login(gw, await wechat.login_code(expires_in=-1)), 400, "wechat_code_invalid"
    )
    problem(await wechat_login(gw, "never-issued"), 400, "wechat_code_invalid")


async def test_an_unknown_mini_program_is_refused(gw: httpx.AsyncClient) -> None:
    problem(await wechat_login(gw, "any", app_id="wxnotconfigured00"), 404, "unknown_mini_program")


async def test_the_phone_code_stores_the_phone(gw: httpx.AsyncClient, wechat: Fake) -> None:
    response = await wechat_login(
        gw, await wechat.login_code(), phone_code=await wechat.phone_code("13800138000")
    )
    assert response.status_code == 200, response.text
    me = await gw.get("/v1/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["phone"] == "13800138000"


async def test_a_bad_phone_code_refuses_the_sign_in_and_changes_nothing(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    who = openid()
    problem(
        await wechat_login(gw, await wechat.login_code(openid=who), phone_code="never-issued"),
        400,
        "wechat_phone_code_invalid",
    )
    later = await wechat_login(gw, await wechat.login_code(openid=who))
    assert later.json()["new_customer"] is True


async def test_an_access_token_wechat_revoked_is_fetched_again(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    first = await wechat_login(
        gw, await wechat.login_code(), phone_code=await wechat.phone_code("13900000001")
    )
    assert first.status_code == 200
    wechat.state.tokens.clear()  # WeChat forgot the cached stable_token
    again = await wechat_login(
        gw, await wechat.login_code(), phone_code=await wechat.phone_code("13900000002")
    )
    assert again.status_code == 200, again.text


async def test_wechat_down_is_503_with_retry_after(gw: httpx.AsyncClient, wechat: Fake) -> None:
    code = await wechat.login_code()
    await wechat.set_state(down=True)
    try:
        response = await wechat_login(gw, code)
    finally:
        await wechat.set_state(down=False)
    problem(response, 503, "wechat_unavailable")
    assert response.headers["retry-after"] == "5"
    # Nothing was used up: the same code still works once WeChat is back.
    assert (await wechat_login(gw, code)).status_code == 200


async def test_wechat_rate_limiting_is_429(gw: httpx.AsyncClient, wechat: Fake) -> None:
    code = await wechat.login_code()
    await wechat.set_state(rate_limited=True)
    try:
        response = await wechat_login(gw, code)
    finally:
        await wechat.set_state()
    problem(response, 429, "wechat_rate_limited")
    assert int(response.headers["retry-after"]) > 0


async def test_wechat_unreachable_is_503(
    gateway_settings: Callable[..., GatewaySettings],
) -> None:
    settings = gateway_settings(WECHAT_API_BASE=f"http://127.0.0.1:{free_port()}")
    async with running(create_app(settings)) as gw:
        problem(await wechat_login(gw, "any"), 503, "wechat_unavailable")


async def test_a_wrong_app_secret_is_the_platforms_error(
    gateway_settings: Callable[..., GatewaySettings], wechat: Fake
) -> None:
    settings = gateway_settings(WECHAT_APP_SECRETS=f"{APP}=not-the-secret")
    async with running(create_app(settings)) as gw:
        problem(
            await wechat_login(gw, await wechat.login_code()), 502, "wechat_credentials_rejected"
        )
