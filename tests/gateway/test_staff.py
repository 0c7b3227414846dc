"""Merchants and staff: onboarding by admins, invitations, roles, password sign-in, throttling,
removal that revokes sessions, and one merchant's staff never seeing another's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.conftest import TokenFactory, running
from tests.gateway.identity_support import (
    PASSWORD,
    bearer,
    email,
    invite,
    merchant_with_owner,
)


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def sign_in(gw: httpx.AsyncClient, login: str, password: str = PASSWORD) -> httpx.Response:
    return await gw.post("/v1/auth/staff-login", json={"login": login, "password": password})


async def test_an_admin_onboards_a_merchant_whose_owner_signs_in(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    me = await gw.get("/v1/me", headers=owner.headers)
    assert me.json()["roles"] == ["staff"]
    assert me.json()["merchant_id"] == owner.merchant_id
    assert me.json()["merchant_role"] == "owner"
    assert me.json()["name"] == "Owner"
    again = await sign_in(gw, owner.login.upper())  # emails compare without case
    assert again.status_code == 200, again.text
    merchant = await gw.get(f"/v1/merchants/{owner.merchant_id}", headers=owner.headers)
    assert merchant.json()["status"] == "active"


async def test_only_admins_create_and_list_merchants(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    body = {"name": "Mine", "owner": {"name": "Me", "email": email()}}
    problem(await gw.post("/v1/merchants", json=body, headers=owner.headers), 403, "role_required")
    problem(await gw.get("/v1/merchants", headers=auth("customer")), 403, "role_required")
    listed = await gw.get("/v1/merchants", params={"limit": 100}, headers=auth("admin"))
    assert owner.merchant_id in {m["id"] for m in listed.json()["items"]}


async def test_staff_sign_in_with_a_phone_number(gw: httpx.AsyncClient, auth: TokenFactory) -> None:
    phone = f"86139{abs(hash(email())) % 10**8:08d}"
    created = await gw.post(
        "/v1/merchants",
        json={"name": "By phone", "owner": {"name": "P", "phone": f"+{phone[:2]} {phone[2:]}"}},
        headers=auth("admin"),
    )
    invitation = created.json()["owner_invitation"]
    accepted = await gw.post(
        "/v1/auth/accept-invitation",
        json={"invitation_token": invitation["invitation_token"], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    assert (await sign_in(gw, phone)).status_code == 200
    # An invitation works once.
    reused = await gw.post(
        "/v1/auth/accept-invitation",
        json={"invitation_token": invitation["invitation_token"], "password": PASSWORD},
    )
    problem(reused, 404, "invitation_invalid")


async def test_a_wrong_password_and_an_unknown_login_get_the_same_answer(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    problem(await sign_in(gw, owner.login, "not the password"), 401, "invalid_credentials")
    problem(await sign_in(gw, email()), 401, "invalid_credentials")


async def test_failed_sign_ins_are_throttled_per_account(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    async with running(create_app(gateway_settings(LOGIN_FAILURES_PER_ACCOUNT="3/minute"))) as gw:
        owner = await merchant_with_owner(gw, auth("admin"))
        for _ in range(3):
            problem(await sign_in(gw, owner.login, "wrong password"), 401, "invalid_credentials")
        throttled = await sign_in(gw, owner.login)  # even the right password, for now
        problem(throttled, 429, "login_throttled")
        assert 0 < int(throttled.headers["retry-after"]) <= 60
        # Other accounts are not locked out by it.
        other = await merchant_with_owner(gw, auth("admin"))
        assert (await sign_in(gw, other.login)).status_code == 200


async def test_failed_sign_ins_are_throttled_per_address(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    settings = gateway_settings(LOGIN_FAILURES_PER_ADDRESS="4/minute")
    async with running(create_app(settings)) as gw:
        owner = await merchant_with_owner(gw, auth("admin"))
        for _ in range(4):
            problem(await sign_in(gw, email(), "guessing"), 401, "invalid_credentials")
        problem(await sign_in(gw, owner.login), 429, "login_throttled")


async def test_an_owner_invites_changes_roles_and_removes_staff(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    operator = await invite(gw, owner, "operator")
    viewer = await invite(gw, owner, "viewer")
    me = (await gw.get("/v1/me", headers=operator.headers)).json()
    assert (me["merchant_id"], me["merchant_role"]) == (owner.merchant_id, "operator")

    # Only owners manage staff; every role sees the list.
    body = {"name": "X", "email": email(), "role": "viewer"}
    problem(
        await gw.post("/v1/staff", json=body, headers=operator.headers),
        403,
        "merchant_role_required",
    )
    listed = await gw.get("/v1/staff", headers=viewer.headers)
    assert {s["id"] for s in listed.json()["items"]} == {owner.id, operator.id, viewer.id}

    changed = await gw.patch(
        f"/v1/staff/{viewer.id}", json={"role": "finance"}, headers=owner.headers
    )
    assert changed.json()["role"] == "finance"
    refreshed = await gw.post("/v1/auth/refresh", json={"refresh_token": viewer.refresh})
    new_me = await gw.get("/v1/me", headers=bearer(refreshed.json()["access_token"]))
    assert new_me.json()["merchant_role"] == "finance"  # the next token carries the new role

    removed = await gw.delete(f"/v1/staff/{operator.id}", headers=owner.headers)
    assert removed.status_code == 204
    problem(
        await gw.post("/v1/auth/refresh", json={"refresh_token": operator.refresh}),
        401,
        "session_revoked",
    )
    problem(await sign_in(gw, operator.login), 401, "invalid_credentials")
    # Their access token still verifies until it expires, but the gateway's staff endpoints
    # read the row: a removed member can do nothing here.
    problem(await gw.get("/v1/staff", headers=operator.headers), 401, "session_revoked")
    listed = await gw.get("/v1/staff", headers=owner.headers)
    assert operator.id not in {s["id"] for s in listed.json()["items"]}


async def test_a_merchant_keeps_an_owner(gw: httpx.AsyncClient, auth: TokenFactory) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    problem(
        await gw.patch(f"/v1/staff/{owner.id}", json={"role": "viewer"}, headers=owner.headers),
        409,
        "last_owner",
    )
    problem(await gw.delete(f"/v1/staff/{owner.id}", headers=owner.headers), 409, "last_owner")


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    first = await merchant_with_owner(gw, auth("admin"))
    second = await invite(gw, first, "owner")
    answers = await asyncio.gather(
        gw.patch(f"/v1/staff/{second.id}", json={"role": "viewer"}, headers=first.headers),
        gw.patch(f"/v1/staff/{first.id}", json={"role": "viewer"}, headers=second.headers),
    )
    assert sorted(a.status_code for a in answers) in ([200, 403], [200, 409]), [
        a.text for a in answers
    ]
    listed = await gw.get(
        "/v1/staff", headers=auth("admin"), params={"merchant_id": first.merchant_id}
    )
    assert [s["role"] for s in listed.json()["items"]].count("owner") == 1


async def test_one_merchants_staff_never_see_anothers(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    mine = await merchant_with_owner(gw, auth("admin"))
    theirs = await merchant_with_owner(gw, auth("admin"))
    headers = mine.headers
    problem(
        await gw.get(f"/v1/merchants/{theirs.merchant_id}", headers=headers),
        404,
        "merchant_not_found",
    )
    problem(
        await gw.get("/v1/staff", params={"merchant_id": theirs.merchant_id}, headers=headers),
        404,
        "merchant_not_found",
    )
    problem(
        await gw.patch(f"/v1/staff/{theirs.id}", json={"role": "viewer"}, headers=headers),
        404,
        "staff_not_found",
    )
    problem(await gw.delete(f"/v1/staff/{theirs.id}", headers=headers), 404, "staff_not_found")
    body = {"merchant_id": theirs.merchant_id, "name": "Spy", "email": email(), "role": "owner"}
    problem(await gw.post("/v1/staff", json=body, headers=headers), 404, "merchant_not_found")


async def test_a_login_names_one_person(gw: httpx.AsyncClient, auth: TokenFactory) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    other = await merchant_with_owner(gw, auth("admin"))
    body = {"name": "Twin", "email": other.login, "role": "viewer"}
    problem(await gw.post("/v1/staff", json=body, headers=owner.headers), 409, "staff_login_taken")


async def test_a_suspended_merchants_staff_cannot_sign_in(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    suspended = await gw.patch(
        f"/v1/merchants/{owner.merchant_id}", json={"status": "suspended"}, headers=auth("admin")
    )
    assert suspended.json()["status"] == "suspended"
    problem(await sign_in(gw, owner.login), 403, "merchant_suspended")
    problem(
        await gw.post("/v1/auth/refresh", json={"refresh_token": owner.refresh}),
        403,
        "merchant_suspended",
    )


async def test_invitations_need_a_login_and_passwords_a_length(
    gw: httpx.AsyncClient, auth: TokenFactory
) -> None:
    owner = await merchant_with_owner(gw, auth("admin"))
    no_login = await gw.post(
        "/v1/staff", json={"name": "Nobody", "role": "viewer"}, headers=owner.headers
    )
    problem(no_login, 422, "validation_error")
    short = await gw.post(
        "/v1/auth/accept-invitation", json={"invitation_token": "x", "password": "short"}
    )
    problem(short, 422, "validation_error")


async def test_the_first_admin_is_invited_from_the_command_line(
    gw: httpx.AsyncClient, db_urls: dict[str, str], tmp_path: Path
) -> None:
    login = email()
    env = {**os.environ, "GATEWAY_DATABASE_URL": db_urls["gateway"], "QUNBUY_MODE": "production"}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "qunbuy.cli",
            "admin",
            "invite",
            "--name",
            "Ada",
            "--email",
            login,
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.split("POST /v1/auth/accept-invitation): ", 1)[1].split()[0]
    accepted = await gw.post(
        "/v1/auth/accept-invitation", json={"invitation_token": token, "password": PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    admin = bearer(accepted.json()["access_token"])
    me = await gw.get("/v1/me", headers=admin)
    assert (me.json()["roles"], me.json()["merchant_id"]) == (["admin"], None)
    owner = await merchant_with_owner(gw, admin)
    assert (await sign_in(gw, owner.login)).status_code == 200
