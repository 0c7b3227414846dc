"""Refresh tokens rotate and detect reuse; logout revokes; signing keys rotate with an overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from shared.auth import TokenVerifier, load_or_create_private_key, public_pem
from tests.conftest import running, settings_for
from tests.gateway.identity_support import Fake, bearer, wechat_login
from tests.helpers import serve


async def signed_in(gw: httpx.AsyncClient, wechat: Fake) -> dict[str, Any]:
    response = await wechat_login(gw, await wechat.login_code())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(gw: httpx.AsyncClient, token: str) -> httpx.Response:
    return await gw.post("/v1/auth/refresh", json={"refresh_token": token})


def code_of(response: httpx.Response) -> str:
    return str(response.json()["code"])


async def test_a_refresh_token_rotates_on_every_use(gw: httpx.AsyncClient, wechat: Fake) -> None:
    login = await signed_in(gw, wechat)
    first = await refresh(gw, login["refresh_token"])
    assert first.status_code == 200, first.text
    second = await refresh(gw, first.json()["refresh_token"])
    assert second.status_code == 200
    tokens = {login["refresh_token"], first.json()["refresh_token"], second.json()["refresh_token"]}
    assert len(tokens) == 3
    assert second.json()["user_id"] == login["user_id"]
    me = await gw.get("/v1/me", headers=bearer(second.json()["access_token"]))
    assert me.json()["user_id"] == login["user_id"]


async def test_reusing_an_old_refresh_token_revokes_the_whole_login(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    login = await signed_in(gw, wechat)
    newer = (await refresh(gw, login["refresh_token"])).json()["refresh_token"]
    stolen = await refresh(gw, login["refresh_token"])
    assert stolen.status_code == 401
    assert code_of(stolen) == "refresh_token_reused"
    # The owner's current token died with the family.
    after = await refresh(gw, newer)
    assert (after.status_code, code_of(after)) == (401, "session_revoked")
    # Another login of the same customer is another family, untouched.
    other = await signed_in(gw, wechat)
    assert (await refresh(gw, other["refresh_token"])).status_code == 200


async def test_the_same_refresh_token_sent_ten_times_at_once_works_once(
    gw: httpx.AsyncClient, wechat: Fake
) -> None:
    login = await signed_in(gw, wechat)
    answers = await asyncio.gather(*(refresh(gw, login["refresh_token"]) for _ in range(10)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [401] * 9
    # The first reuse revokes the family; those after it find it revoked.
    codes = [code_of(a) for a in answers if a.status_code == 401]
    assert "refresh_token_reused" in codes
    assert set(codes) <= {"refresh_token_reused", "session_revoked"}
    (winner,) = [a for a in answers if a.status_code == 200]
    # A reuse after the winner's rotation revoked the family, the winner's token with it.
    assert code_of(await refresh(gw, winner.json()["refresh_token"])) == "session_revoked"


async def test_logout_revokes_the_login(gw: httpx.AsyncClient, wechat: Fake) -> None:
    login = await signed_in(gw, wechat)
    out = await gw.post("/v1/auth/logout", json={"refresh_token": login["refresh_token"]})
    assert out.status_code == 204
    after = await refresh(gw, login["refresh_token"])
    assert (after.status_code, code_of(after)) == (401, "session_revoked")
    # Logging out twice, or with a token never issued, is no error.
    again = await gw.post("/v1/auth/logout", json={"refresh_token": "never-issued"})
    assert again.status_code == 204


async def test_unknown_and_expired_refresh_tokens_are_refused(
    gateway_settings: Callable[..., GatewaySettings], wechat: Fake
) -> None:
    async with running(create_app(gateway_settings(REFRESH_TOKEN_TTL_SECONDS="1"))) as gw:
        unknown = await refresh(gw, "not-a-token")
        assert (unknown.status_code, code_of(unknown)) == (401, "refresh_token_invalid")
        login = await signed_in(gw, wechat)
        assert login["refresh_expires_in"] == 1
        await asyncio.sleep(1.2)
        late = await refresh(gw, login["refresh_token"])
        assert (late.status_code, code_of(late)) == (401, "refresh_token_expired")


def key_file(path: Path) -> Path:
    load_or_create_private_key(path)
    return path


async def test_key_rotation_keeps_old_tokens_valid_through_the_overlap(
    gateway_settings: Callable[..., GatewaySettings],
    service_env: Callable[..., dict[str, str]],
    tmp_path: Path,
    wechat: Fake,
) -> None:
    old_key, new_key = key_file(tmp_path / "old.pem"), key_file(tmp_path / "new.pem")
    old_public = tmp_path / "old-public.pem"
    old_public.write_bytes(public_pem(load_or_create_private_key(old_key)))
    async with running(create_app(gateway_settings(JWT_PRIVATE_KEY_FILE=str(old_key)))) as before:
        old_token = (await signed_in(before, wechat))["access_token"]

    rotated = gateway_settings(
        JWT_PRIVATE_KEY_FILE=str(new_key), JWT_PREVIOUS_PUBLIC_KEYS_FILE=str(old_public)
    )
    gateway = create_app(rotated)
    async with running(gateway) as during, serve(gateway, lifespan="off") as url:
        keys = (await during.get("/.well-known/jwks.json")).json()["keys"]
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        new_token = (await signed_in(during, wechat))["access_token"]
        new_kid = jwt.get_unverified_header(new_token)["kid"]
        assert [k["kid"] for k in keys] == [new_kid, old_kid]
        for token in (old_token, new_token):
            assert (await during.get("/v1/me", headers=bearer(token))).status_code == 200

        # A service that reads the JWKS learns the new key from it, the old one too.
        env = service_env("orders", JWT_JWKS_URL=f"{url}/.well-known/jwks.json")
        env.pop("JWT_PUBLIC_KEY_FILE")
        from services.orders.app import create_app as create_orders

        async with running(create_orders(settings_for("orders", env))) as orders:
            for token in (old_token, new_token):
                answer = await orders.get("/v1/orders", headers=bearer(token))
                assert answer.status_code == 200, answer.text
                assert answer.json()["items"] == []

    # A service given a key file with both public keys accepts both as well.
    both = tmp_path / "both.pem"
    both.write_bytes(old_public.read_bytes() + public_pem(load_or_create_private_key(new_key)))
    verifier = TokenVerifier.from_file(both, issuer="qunbuy-gateway", audience="qunbuy")
    assert {verifier.verify(old_token).sub, verifier.verify(new_token).sub} <= {
        jwt.decode(t, options={"verify_signature": False})["sub"] for t in (old_token, new_token)
    }

    # After the overlap the old key is gone: its tokens are refused, the new ones not.
    async with running(create_app(gateway_settings(JWT_PRIVATE_KEY_FILE=str(new_key)))) as after:
        assert len((await after.get("/.well-known/jwks.json")).json()["keys"]) == 1
        refused = await after.get("/v1/me", headers=bearer(old_token))
        assert (refused.status_code, code_of(refused)) == (401, "invalid_token")
        assert (await after.get("/v1/me", headers=bearer(new_token))).status_code == 200


def test_a_key_file_without_a_key_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"no key here")
    with pytest.raises(ValueError, match=r"no EC \(P-256\) public key"):
        TokenVerifier.from_file(empty, issuer="i", audience="a")
