"""User tokens: the gateway signs JWTs with an ES256 key, every service verifies them.

Roles: ``customer``, ``distributor``, ``staff`` (with the ``merchant_id`` claim of the one
merchant they work for, and the ``merchant_role`` they hold there) and ``admin`` (platform
operators, who see every merchant).

Keys rotate: every token names its key (``kid``); a verifier holds every key it accepts (a key
file may hold several PEM blocks, and a JWKS URL is read again when a token names a key it
does not know yet).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Unauthorized
from shared.text import unstorable_reason

__all__ = [
    "MAX_ID_LENGTH",
    "MERCHANT_ROLES",
    "ROLES",
    "AnyCaller",
    "AnyStaff",
    "CatalogStaff",
    "CurrentUser",
    "MerchantRole",
    "MerchantRoleRequired",
    "MerchantRolesRequired",
    "MoneyStaff",
    "OptionalUser",
    "Principal",
    "Role",
    "RolesRequired",
    "TokenIssuer",
    "TokenVerifier",
    "ensure_staff_of",
    "load_or_create_private_key",
    "require_merchant_role",
    "require_roles",
    "requirements_of",
]

Role = Literal["customer", "distributor", "staff", "admin"]
ROLES: tuple[Role, ...] = ("customer", "distributor", "staff", "admin")
# What a staff member may do within their merchant (docs/identity.md, "Roles").
MerchantRole = Literal["owner", "operator", "finance", "viewer"]
MERCHANT_ROLES: tuple[MerchantRole, ...] = ("owner", "operator", "finance", "viewer")
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


class MerchantRoleRequired(Forbidden):
    code = "merchant_role_required"
    title = "Your role within the merchant does not allow this"


class OtherMerchant(Forbidden):
    code = "other_merchant"
    title = "This belongs to another merchant"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    roles: frozenset[Role]
    merchant_id: str | None = None
    # None on staff tokens minted before roles within a merchant existed (and by the
    # development login when none is asked for): such staff hold every merchant role.
    merchant_role: MerchantRole | None = None
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
    return _kid(_load_public(public_key_pem))


def _kid(key: ec.EllipticCurvePublicKey) -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    digest = hashlib.sha256(f"{jwk['x']}.{jwk['y']}".encode()).digest()[:12]
    return jwt.utils.base64url_encode(digest).decode()


def _load_public(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the JWT public key must be an EC (P-256) key")
    return key


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(pem: bytes) -> dict[str, ec.EllipticCurvePublicKey]:
    """Every public key in ``pem`` (one or more PEM blocks), by key id."""
    keys = [_load_public(block) for block in _PEM_BLOCK.findall(pem)]
    return {_kid(key): key for key in keys}


class TokenIssuer:
    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        previous: bytes = b"",
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.public_pem = public_pem(key)
        self.kid = key_id(self.public_pem)
        # Keys that signed tokens before the last rotation: published until those expire.
        self.previous = {k: v for k, v in load_public_keys(previous).items() if k != self.kid}

    def verifier(self) -> TokenVerifier:
        """A verifier of this issuer's tokens, old keys' included."""
        pems = [self.public_pem, *(_pem(key) for key in self.previous.values())]
        return TokenVerifier(b"".join(pems), issuer=self.issuer, audience=self.audience)

    def issue(
        self,
        sub: str,
        roles: list[Role],
        *,
        merchant_id: str | None = None,
        merchant_role: MerchantRole | None = None,
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
        if merchant_role is not None:
            claims["merchant_role"] = merchant_role
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The current key first, then the previous ones still in their overlap."""
        keys = [(self.kid, self._key.public_key()), *self.previous.items()]
        return {"keys": [_jwk(kid, key) for kid, key in keys]}


def _jwk(kid: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
    return jwk


def _pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class UnknownKey(InvalidToken):
    """The token names a key this verifier does not hold (yet)."""


# A JWKS is read again for an unknown key at most this often (a flood of tokens naming
# made-up keys must not become a flood of requests to the gateway).
_JWKS_MIN_INTERVAL = 30.0


class TokenVerifier:
    def __init__(
        self,
        public_keys_pem: bytes = b"",
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
    ) -> None:
        self._keys = load_public_keys(public_keys_pem)
        if not self._keys and jwks_url is None:
            raise ValueError("no EC (P-256) public key found, and no JWKS URL to read")
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self._jwks_read_at = float("-inf")

    @classmethod
    def from_file(
        cls, path: str | Path, *, issuer: str, audience: str, jwks_url: str | None = None
    ) -> TokenVerifier:
        return cls(Path(path).read_bytes(), issuer=issuer, audience=audience, jwks_url=jwks_url)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def read_jwks(self) -> bool:
        """Adds the keys the JWKS publishes; False when it was read too recently or failed."""
        now = time.monotonic()
        if self.jwks_url is None or now - self._jwks_read_at < _JWKS_MIN_INTERVAL:
            return False
        self._jwks_read_at = now
        try:
            async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
                response = await client.get(self.jwks_url)
            response.raise_for_status()
            keys = [jwt.PyJWK(jwk) for jwk in response.json()["keys"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, jwt.PyJWTError):
            return False
        for jwk in keys:
            if isinstance(jwk.key, ec.EllipticCurvePublicKey) and jwk.key_id:
                self._keys[jwk.key_id] = jwk.key
        return True

    async def verify_async(self, token: str) -> Principal:
        """:meth:`verify`, reading the JWKS again when the token names a key not known yet."""
        try:
            return self.verify(token)
        except UnknownKey:
            if await self.read_jwks():
                return self.verify(token)
            raise

    def _key_for(self, token: str) -> ec.EllipticCurvePublicKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken("the token is malformed") from exc
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))  # a token from before key ids
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownKey("the token is signed by a key this platform does not know")
        return key

    def verify(self, token: str) -> Principal:
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
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
        merchant_role = claims.get("merchant_role")
        if merchant_role is not None and merchant_role not in MERCHANT_ROLES:
            raise InvalidToken("the token's merchant role is unknown")
        return Principal(
            sub=cast(str, sub),
            roles=roles,
            merchant_id=cast(str | None, merchant_id),
            merchant_role=cast(MerchantRole | None, merchant_role),
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
    principal = await _verifier(request).verify_async(credentials.credentials)
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


@dataclass(frozen=True)
class RolesRequired:
    """The dependency of :func:`require_roles`, readable from the routes (the role matrix)."""

    roles: tuple[Role, ...]

    async def __call__(self, principal: CurrentUser) -> Principal:
        if not principal.is_admin and not principal.has(*self.roles):
            raise RoleRequired(f"requires one of: {', '.join(self.roles)}")
        return principal


def require_roles(*roles: Role) -> Any:
    """A dependency that admits callers holding any of ``roles`` (admins always pass)."""
    return Depends(RolesRequired(roles))


@dataclass(frozen=True)
class MerchantRolesRequired:
    """The dependency of :func:`require_merchant_role`: the roles within a merchant an
    endpoint needs, stated where the routes (OpenAPI's ``x-merchant-roles``, the role
    matrix test) can read them."""

    roles: tuple[MerchantRole, ...]
    others: tuple[Role, ...] = ()

    async def __call__(self, principal: CurrentUser) -> Principal:
        if principal.is_admin:
            return principal
        if principal.has("staff"):
            # A staff token without a merchant role predates roles: it holds them all.
            if self.roles and principal.merchant_role in (None, *self.roles):
                return principal
            wanted = ", ".join(self.roles) or "none (not for staff)"
            raise MerchantRoleRequired(f"requires one of these merchant roles: {wanted}")
        if principal.has(*self.others):
            return principal
        raise RoleRequired(f"requires one of: {', '.join(('staff', *self.others))}")


def require_merchant_role(*roles: MerchantRole, others: tuple[Role, ...] = ()) -> Any:
    """Admins, and staff holding one of ``roles`` within their merchant; callers with one
    of the ``others`` roles pass too (the endpoint then checks what is theirs)."""
    return Depends(MerchantRolesRequired(roles, others))


def requirements_of(dependant: Dependant) -> list[MerchantRolesRequired | RolesRequired]:
    """The role requirements in an endpoint's dependencies (however deep): what it states."""
    found: list[MerchantRolesRequired | RolesRequired] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, MerchantRolesRequired | RolesRequired):
            found.append(sub.call)
        found.extend(requirements_of(sub))
    return found


def merchant_requirement(dependant: Dependant) -> MerchantRolesRequired | None:
    """What an endpoint's staff need, all its requirements taken together; None when it
    states none."""
    stated = [r for r in requirements_of(dependant) if isinstance(r, MerchantRolesRequired)]
    if not stated:
        return None
    return MerchantRolesRequired(
        tuple(r for r in MERCHANT_ROLES if all(r in s.roles for s in stated)),
        tuple(r for r in ROLES if all(r in s.others for s in stated)),
    )


# A customer's own actions (ordering, pledging, claiming); admins pass too.
Customer = Annotated[Principal, require_roles("customer")]
# The endpoints' usual requirements (docs/identity.md, "Roles"):
# the merchant's catalogue and fulfilment (campaigns, shipping, distributors),
CatalogStaff = Annotated[Principal, require_merchant_role("owner", "operator")]
# money (refunds, captures, commission rates, withdrawals),
MoneyStaff = Annotated[Principal, require_merchant_role("owner", "finance")]
# any staff member's reading,
AnyStaff = Annotated[Principal, require_merchant_role(*MERCHANT_ROLES)]
# and endpoints of every signed-in caller, where staff read their merchant's rows.
AnyCaller = Annotated[
    Principal, require_merchant_role(*MERCHANT_ROLES, others=("customer", "distributor"))
]


def ensure_staff_of(principal: Principal, merchant_id: str) -> None:
    """Staff act only for their own merchant; admins act for any."""
    if principal.is_admin:
        return
    if not principal.has("staff"):
        raise RoleRequired("requires the staff role")
    if principal.merchant_id != merchant_id:
        raise OtherMerchant()
