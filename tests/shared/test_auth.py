"""User tokens: ES256 JWTs from the gateway, verified by every process; roles and merchants."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, FastAPI

from shared.auth import (
    CurrentUser,
    OptionalUser,
    OtherMerchant,
    Principal,
    RoleRequired,
    TokenIssuer,
    TokenVerifier,
    ensure_staff_of,
    load_or_create_private_key,
    require_roles,
)
from shared.errors import PROBLEM_JSON, install_error_handlers
from shared.observability import RequestContextMiddleware
from tests.conftest import TokenFactory, running, settings_for

ISSUER = "qunbuy-gateway"
AUDIENCE = "qunbuy"


def protected_router() -> APIRouter:
    router = APIRouter()

    @router.get("/me")
    async def me(user: CurrentUser) -> dict[str, Any]:
        return {"sub": user.sub, "roles": sorted(user.roles), "merchant_id": user.merchant_id}

    @router.get("/maybe")
    async def maybe(user: OptionalUser) -> dict[str, Any]:
        return {"sub": user.sub if user else None}

    @router.get("/staff-only")
    async def staff_only(user: Annotated[Principal, require_roles("staff")]) -> dict[str, str]:
        return {"sub": user.sub}

    @router.get("/sellers")
    async def sellers(
        user: Annotated[Principal, require_roles("staff", "distributor")],
    ) -> dict[str, str]:
        return {"sub": user.sub}

    @router.get("/merchants/{merchant_id}/campaigns")
    async def campaigns(merchant_id: str, user: CurrentUser) -> dict[str, str]:
        ensure_staff_of(user, merchant_id)
        return {"merchant_id": merchant_id}

    return router


def build_app(verifier: TokenVerifier | None) -> FastAPI:
    app = FastAPI()
    if verifier is not None:
        app.state.token_verifier = verifier
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, service="auth-test")
    app.include_router(protected_router())
    return app


@pytest.fixture
async def client(issuer: TokenIssuer) -> AsyncIterator[httpx.AsyncClient]:
    verifier = TokenVerifier(issuer.public_pem, issuer=ISSUER, audience=AUDIENCE)
    transport = httpx.ASGITransport(app=build_app(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    return body


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"user_{uuid.uuid4().hex[:8]}",
        "roles": ["customer"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# --- authentication ----------------------------------------------------------------------


async def test_valid_token_names_the_user(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    token = issuer.issue("user_42", ["customer", "distributor"])
    response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "sub": "user_42",
        "roles": ["customer", "distributor"],
        "merchant_id": None,
    }


async def test_missing_token(client: httpx.AsyncClient) -> None:
    problem(await client.get("/me"), 401, "missing_token")


async def test_optional_user_without_token(client: httpx.AsyncClient, auth: TokenFactory) -> None:
    response = await client.get("/maybe")
    assert response.status_code == 200
    assert response.json() == {"sub": None}
    response = await client.get("/maybe", headers=auth("customer", sub="user_opt"))
    assert response.json() == {"sub": "user_opt"}
    # A broken token is an error even where a token is optional: it is never ignored.
    problem(await client.get("/maybe", headers=bearer("garbage")), 401, "invalid_token")


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearer",
        "Bearer ",
        "bearer-abc",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
    ],
)
async def test_malformed_header_or_garbage_token(client: httpx.AsyncClient, header: str) -> None:
    problem(await client.get("/me", headers={"Authorization": header}), 401, "invalid_token")


async def test_expired_token(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    token = issuer.issue("user_old", ["customer"], ttl_seconds=-60)
    body = problem(await client.get("/me", headers=bearer(token)), 401, "token_expired")
    assert body["title"] == "The access token has expired"


async def test_expiry_has_a_small_leeway_for_clock_skew(
    client: httpx.AsyncClient, issuer: TokenIssuer
) -> None:
    token = issuer.issue("user_skew", ["customer"], ttl_seconds=-1)
    response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_token_signed_by_another_key(client: httpx.AsyncClient) -> None:
    forger = TokenIssuer(
        ec.generate_private_key(ec.SECP256R1()), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60
    )
    token = forger.issue("user_forged", ["admin"])
    problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize(("iss", "aud"), [(ISSUER, "another-platform"), ("someone-else", AUDIENCE)])
async def test_wrong_audience_or_issuer(
    client: httpx.AsyncClient, signing_key: ec.EllipticCurvePrivateKey, iss: str, aud: str
) -> None:
    other = TokenIssuer(signing_key, issuer=iss, audience=aud, ttl_seconds=60)
    token = other.issue("user_elsewhere", ["customer"])
    problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize(
    "overrides",
    [
        {"roles": ["superuser"]},  # unknown role
        {"roles": "admin"},  # not a list
        {"roles": None},  # missing
        {"exp": None},  # never expires: refused
        {"sub": None},
        {"nbf": int(time.time()) + 3600},  # not valid yet
        {"roles": ["staff"]},  # staff without a merchant
        {"roles": ["staff"], "merchant_id": 42},  # merchant id that is not a string
    ],
    ids=[
        "unknown-role",
        "roles-not-a-list",
        "no-roles",
        "no-exp",
        "no-sub",
        "not-valid-yet",
        "staff-without-merchant",
        "merchant-id-not-a-string",
    ],
)
async def test_bad_claims_are_invalid(
    client: httpx.AsyncClient,
    signing_key: ec.EllipticCurvePrivateKey,
    issuer: TokenIssuer,
    overrides: dict[str, Any],
) -> None:
    token = jwt.encode(
        claims(**overrides), signing_key, algorithm="ES256", headers={"kid": issuer.kid}
    )
    problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")


async def test_staff_token_without_merchant_id(
    client: httpx.AsyncClient, issuer: TokenIssuer
) -> None:
    token = issuer.issue("user_staff", ["staff"])
    body = problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "merchant" in body["detail"]


async def test_unsigned_token_is_refused(client: httpx.AsyncClient) -> None:
    token = jwt.encode(claims(roles=["admin"]), key="", algorithm="none")
    problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")


async def test_tampered_token_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    header, _, signature = issuer.issue("user_t", ["customer"]).split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps(claims(sub="user_t", roles=["admin"])).encode()
    ).decode()
    token = f"{header}.{forged_payload}.{signature}"
    problem(await client.get("/me", headers=bearer(token)), 401, "invalid_token")


async def test_no_verification_key_configured(issuer: TokenIssuer) -> None:
    transport = httpx.ASGITransport(app=build_app(verifier=None))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/me", headers=bearer(issuer.issue("u", ["customer"])))
    problem(response, 401, "invalid_token")


# --- authorisation -----------------------------------------------------------------------


async def test_wrong_role(client: httpx.AsyncClient, auth: TokenFactory) -> None:
    body = problem(
        await client.get("/staff-only", headers=auth("customer", "distributor")),
        403,
        "role_required",
    )
    assert "staff" in body["detail"]
    # Authentication comes first: no token is 401, not 403.
    problem(await client.get("/staff-only"), 401, "missing_token")


async def test_any_of_the_roles_is_enough(client: httpx.AsyncClient, auth: TokenFactory) -> None:
    assert (await client.get("/sellers", headers=auth("distributor"))).status_code == 200
    staff = auth("staff", merchant_id="m_1")
    assert (await client.get("/sellers", headers=staff)).status_code == 200
    problem(await client.get("/sellers", headers=auth("customer")), 403, "role_required")


async def test_staff_see_only_their_merchant(client: httpx.AsyncClient, auth: TokenFactory) -> None:
    staff = auth("staff", merchant_id="m_tea")
    response = await client.get("/merchants/m_tea/campaigns", headers=staff)
    assert response.status_code == 200, response.text
    assert response.json() == {"merchant_id": "m_tea"}
    problem(await client.get("/merchants/m_coffee/campaigns", headers=staff), 403, "other_merchant")
    problem(
        await client.get("/merchants/m_tea/campaigns", headers=auth("customer")),
        403,
        "role_required",
    )


async def test_admin_passes_everything(client: httpx.AsyncClient, auth: TokenFactory) -> None:
    admin = auth("admin")
    for path in ("/me", "/staff-only", "/sellers", "/merchants/m_any/campaigns"):
        response = await client.get(path, headers=admin)
        assert response.status_code == 200, (path, response.text)


def test_ensure_staff_of_directly() -> None:
    staff = Principal(sub="s", roles=frozenset({"staff"}), merchant_id="m_1")
    ensure_staff_of(staff, "m_1")
    with pytest.raises(OtherMerchant) as info:
        ensure_staff_of(staff, "m_2")
    assert info.value.code == "other_merchant"
    assert info.value.status == 403
    with pytest.raises(RoleRequired):
        ensure_staff_of(Principal(sub="c", roles=frozenset({"customer"})), "m_1")
    admin = Principal(sub="a", roles=frozenset({"admin"}))
    ensure_staff_of(admin, "m_2")


# --- the real service app and the published keys ------------------------------------------


async def test_service_app_verifies_gateway_tokens(
    service_env: Callable[..., dict[str, str]], issuer: TokenIssuer, auth: TokenFactory
) -> None:
    """The orders service loads JWT_PUBLIC_KEY_FILE and enforces the same rules."""
    from services.orders.app import create_app

    app = create_app(settings_for("orders", service_env("orders")))
    app.include_router(protected_router(), prefix="/auth-test")
    async with running(app) as client:
        ok = await client.get("/auth-test/me", headers=auth("customer", sub="user_svc"))
        assert ok.status_code == 200, ok.text
        assert ok.json()["sub"] == "user_svc"
        problem(await client.get("/auth-test/me"), 401, "missing_token")
        expired = issuer.issue("user_old", ["customer"], ttl_seconds=-60)
        problem(await client.get("/auth-test/me", headers=bearer(expired)), 401, "token_expired")
        forger = TokenIssuer(
            ec.generate_private_key(ec.SECP256R1()),
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl_seconds=60,
        )
        forged = bearer(forger.issue("user_f", ["admin"]))
        problem(await client.get("/auth-test/me", headers=forged), 401, "invalid_token")
        problem(
            await client.get(
                "/auth-test/merchants/m_2/campaigns", headers=auth("staff", merchant_id="m_1")
            ),
            403,
            "other_merchant",
        )


def test_jwks_verifies_a_token_with_plain_pyjwt(issuer: TokenIssuer) -> None:
    jwks = issuer.jwks()
    assert len(jwks["keys"]) == 1
    published = jwks["keys"][0]
    assert published["kty"] == "EC"
    assert published["crv"] == "P-256"
    assert published["alg"] == "ES256"
    assert published["use"] == "sig"
    assert "d" not in published  # the private half is never published

    token = issuer.issue("user_jwks", ["staff"], merchant_id="m_9")
    assert jwt.get_unverified_header(token)["kid"] == published["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[published["kid"]]
    decoded = jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    assert decoded["sub"] == "user_jwks"
    assert decoded["roles"] == ["staff"]
    assert decoded["merchant_id"] == "m_9"

    forger = TokenIssuer(
        ec.generate_private_key(ec.SECP256R1()), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60
    )
    assert forger.kid != issuer.kid
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            forger.issue("x", ["admin"]),
            jwt.PyJWK(published),
            algorithms=["ES256"],
            audience=AUDIENCE,
            issuer=ISSUER,
        )


def test_private_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "jwt-private.pem"
    first = load_or_create_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_private_key(path)
    assert first.private_numbers() == again.private_numbers()
    issued = TokenIssuer(first, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    verifier = TokenVerifier(
        TokenIssuer(again, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60).public_pem,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    principal = verifier.verify(issued.issue("user_k", ["staff", "admin"], merchant_id="m"))
    assert principal.is_admin
    assert principal.merchant_id == "m"
    assert principal.roles == frozenset({"staff", "admin"})
