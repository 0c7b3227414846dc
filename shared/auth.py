"""User tokens: the gateway signs JWTs with an ES256 key, every service verifies them.

Roles: ``customer``, ``distributor``, ``staff`` (with the ``merchant_id`` claim of the one
merchant they work for) and ``admin`` (platform operators, who see every merchant).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Unauthorized
from shared.text import unstorable_reason

__all__ = [
    "MAX_ID_LENGTH",
    "ROLES",
    "CurrentUser",
    "OptionalUser",
    "Principal",
    "Role",
    "TokenIssuer",
    "TokenVerifier",
    "ensure_staff_of",
    "load_or_create_private_key",
    "require_roles",
]

Role = Literal["customer", "distributor", "staff", "admin"]
ROLES: tuple[Role, ...] = ("customer", "distributor", "staff", "admin")
ALGORITHM = "ES256"
# Users and merchants are referred to by these ids in every service's tables (String(100)).
MAX_ID_LENGTH = 100


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "The access token is not valid"


class TokenExpired(Unauthorized):
    code = "token_expired"
    title = "The access token has expired"


class MissingToken(Unauthorized):
    code = "missing_token"
    title = "An access token is required"


class RoleRequired(Forbidden):
    code = "role_required"
    title = "Your role does not allow this"


class OtherMerchant(Forbidden):
    code = "other_merchant"
    title = "This belongs to another merchant"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    roles: frozenset[Role]
    merchant_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    def acts_for(self, merchant_id: str) -> bool:
        """Admins act for every merchant, staff for their own."""
        return self.is_admin or (self.has("staff") and self.merchant_id == merchant_id)


def load_or_create_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The gateway's signing key, generated on first start and kept (mode 0600) in ``path``."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key_pem: bytes) -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(_load_public(public_key_pem)))
    digest = hashlib.sha256(f"{jwk['x']}.{jwk['y']}".encode()).digest()[:12]
    return jwt.utils.base64url_encode(digest).decode()


def _load_public(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the JWT public key must be an EC (P-256) key")
    return key


class TokenIssuer:
    def __init__(
        self, key: ec.EllipticCurvePrivateKey, *, issuer: str, audience: str, ttl_seconds: int
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.public_pem = public_pem(key)
        self.kid = key_id(self.public_pem)

    def issue(
        self,
        sub: str,
        roles: list[Role],
        *,
        merchant_id: str | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "roles": list(roles),
            "iat": now,
            "nbf": now,
            "exp": now + (self.ttl_seconds if ttl_seconds is None else ttl_seconds),
            "jti": uuid.uuid4().hex,
        }
        if merchant_id is not None:
            claims["merchant_id"] = merchant_id
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [jwk]}


class TokenVerifier:
    def __init__(self, public_key_pem: bytes, *, issuer: str, audience: str) -> None:
        self._key = _load_public(public_key_pem)
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_file(cls, path: str | Path, *, issuer: str, audience: str) -> TokenVerifier:
        return cls(Path(path).read_bytes(), issuer=issuer, audience=audience)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.PyJWTError as exc:
            # PyJWT's message may quote the token's contents: it is not sent back.
            raise InvalidToken(
                "the token is malformed, forged or not meant for this platform"
            ) from exc
        raw_roles = claims.get("roles")
        if not isinstance(raw_roles, list) or not all(r in ROLES for r in raw_roles):
            raise InvalidToken("the token's roles claim is missing or unknown")
        roles = frozenset(cast(list[Role], raw_roles))
        sub = claims.get("sub")
        if not _fits(sub):
            raise InvalidToken(
                f"the token's subject must be 1 to {MAX_ID_LENGTH} printable characters"
            )
        merchant_id = claims.get("merchant_id")
        if merchant_id is not None and not _fits(merchant_id):
            raise InvalidToken(
                f"the token's merchant must be 1 to {MAX_ID_LENGTH} printable characters"
            )
        if "staff" in roles and merchant_id is None:
            raise InvalidToken("a staff token must name its merchant")
        return Principal(
            sub=cast(str, sub),
            roles=roles,
            merchant_id=cast(str | None, merchant_id),
            claims=claims,
        )


def _fits(value: object) -> bool:
    """An id from a token is stored in columns of MAX_ID_LENGTH: it must fit, and be text
    the database can store."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and unstorable_reason(value) is None
    )


_bearer = HTTPBearer(auto_error=False)


def _verifier(request: Request) -> TokenVerifier:
    verifier = getattr(request.app.state, "token_verifier", None)
    if verifier is None:
        raise InvalidToken("this process has no token verification key configured")
    return cast(TokenVerifier, verifier)


async def optional_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    if credentials is None:
        if request.headers.get("authorization"):
            raise InvalidToken("the Authorization header must be 'Bearer <token>'")
        return None
    verified = getattr(request.state, "principal", None)
    if isinstance(verified, Principal):  # already verified earlier in this request
        return verified
    principal = _verifier(request).verify(credentials.credentials)
    request.state.principal = principal
    return principal


async def current_user(
    principal: Annotated[Principal | None, Depends(optional_user)],
) -> Principal:
    if principal is None:
        raise MissingToken()
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
OptionalUser = Annotated[Principal | None, Depends(optional_user)]


def require_roles(*roles: Role) -> Any:
    """A dependency that admits callers holding any of ``roles`` (admins always pass)."""

    async def dependency(principal: CurrentUser) -> Principal:
        if not principal.is_admin and not principal.has(*roles):
            raise RoleRequired(f"requires one of: {', '.join(roles)}")
        return principal

    return Depends(dependency)


def ensure_staff_of(principal: Principal, merchant_id: str) -> None:
    """Staff act only for their own merchant; admins act for any."""
    if principal.is_admin:
        return
    if not principal.has("staff"):
        raise RoleRequired("requires the staff role")
    if principal.merchant_id != merchant_id:
        raise OtherMerchant()
