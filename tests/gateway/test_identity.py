from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.conftest import running


def settings(tmp_path: Path, mode: str) -> GatewaySettings:
    # Production needs its identity store; nothing here reaches it (the engine is lazy).
    database = "postgresql://postgres@127.0.0.1:1/none" if mode == "production" else None
    return GatewaySettings(
        QUNBUY_MODE=mode,
        JWT_PRIVATE_KEY_FILE=str(tmp_path / "keys" / "jwt.pem"),
        DATABASE_URL=database,
        LOG_LEVEL="WARNING",
    )


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings(tmp_path, "embedded"))) as client:
        yield client


async def test_dev_login_issues_a_token_that_me_and_jwks_accept(
    embedded: httpx.AsyncClient,
) -> None:
    login = await embedded.post(
        "/v1/auth/dev-login", json={"user_id": "u1", "roles": ["staff"], "merchant_id": "m1"}
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = await embedded.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {
        "user_id": "u1",
        "roles": ["staff"],
        "merchant_id": "m1",
        "merchant_role": None,
        "name": None,
        "phone": None,
        "mini_programs": [],
    }

    keys = (await embedded.get("/.well-known/jwks.json")).json()["keys"]
    header = jwt.get_unverified_header(token)
    [key] = [k for k in keys if k["kid"] == header["kid"]]
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["ES256"], audience="qunbuy")
    assert claims["sub"] == "u1"
    assert claims["roles"] == ["staff"]


async def test_staff_login_needs_a_merchant(embedded: httpx.AsyncClient) -> None:
    response = await embedded.post("/v1/auth/dev-login", json={"roles": ["staff"]})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_unknown_role_is_refused(embedded: httpx.AsyncClient) -> None:
    response = await embedded.post("/v1/auth/dev-login", json={"roles": ["root"]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"].startswith("body.roles")


async def test_signing_key_is_kept_across_restarts(tmp_path: Path) -> None:
    async with running(create_app(settings(tmp_path, "embedded"))) as first:
        token = (await first.post("/v1/auth/dev-login", json={})).json()["access_token"]
    key_file = tmp_path / "keys" / "jwt.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    async with running(create_app(settings(tmp_path, "embedded"))) as second:
        me = await second.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200


async def test_dev_login_does_not_exist_in_production(tmp_path: Path) -> None:
    # Production never generates a key: it must be provisioned.
    with pytest.raises(RuntimeError, match="JWT_PRIVATE_KEY_FILE"):
        create_app(settings(tmp_path, "production"))
    async with running(create_app(settings(tmp_path, "embedded"))):
        pass  # creates the key file
    async with running(create_app(settings(tmp_path, "production"))) as prod:
        response = await prod.post("/v1/auth/dev-login", json={})
    assert response.status_code == 404
    assert response.json()["code"] == "dev_login_disabled"


def test_production_needs_the_identity_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        GatewaySettings(
            QUNBUY_MODE="production",
            JWT_PRIVATE_KEY_FILE=str(tmp_path / "k.pem"),
            DATABASE_URL=None,
        )


async def test_me_without_token_is_401(embedded: httpx.AsyncClient) -> None:
    response = await embedded.get("/v1/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "missing_token"
