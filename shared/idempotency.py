"""``Idempotency-Key`` for POSTs: a replay returns the first response byte for byte.

Rules (the same as the public payment APIs our clients already know):

- Keys are scoped to the caller (the token's subject; ``anonymous`` without a token) and
  kept for :data:`KEY_TTL` (24 hours).
- The same key with a different method, path or body: 422 ``idempotency_key_reused``.
- The same key while the first request is still running: 409 ``idempotency_request_in_flight``.
- A response is stored when the request reached a decision (2xx, and 4xx other than
  401/403/409/429). Other outcomes, 5xx included, roll back with nothing done, so the key is
  released and a retry runs again.
- A running request renews its lock every 20 s. A process that dies mid-request stops
  renewing, and :data:`LOCK_TIMEOUT` (60 s) later a retry takes the key over and runs
  again. Each hold has an owner token, so a late finisher can neither release nor
  overwrite the hold that took over. The money-moving code under it is itself idempotent
  (provider idempotency keys, unique constraints), so a re-run cannot move money twice.
- A response is stored only when it was sent whole (not when the client went away
  mid-body) and is at most 1 MiB; otherwise the key is released.

Endpoints that move money declare :data:`IdempotencyKeyRequired`, so a POST without the
header is refused with 400 ``idempotency_key_required``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, cast
from urllib.parse import quote

from fastapi import Depends, Header, Request
from sqlalchemy import Executable, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal, TokenVerifier
from shared.errors import BadRequest, DomainError, send_problem
from shared.limits import read_body
from shared.openapi import REQUIRED_MARK
from shared.tables import PlatformTables

__all__ = [
    "IDEMPOTENCY_HEADER",
    "FreshKey",
    "IdempotencyKeyRequired",
    "IdempotencyMiddleware",
    "PreClaim",
    "PreClaimCheck",
    "purge_expired",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
LOCK_TIMEOUT = timedelta(seconds=60)
# Responses larger than this are not kept for replay (the key is released instead).
MAX_STORED_BODY = 1024 * 1024
_MAX_KEY_LENGTH = 255
_NOT_STORED = {401, 403, 409, 429}
_REPLAYED_HEADERS = {"content-type", "location", "content-language"}
_HEADER_BYTES = IDEMPOTENCY_HEADER.lower().encode()
_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{_MAX_KEY_LENGTH}}}")
# What may stay as it is in the stored request target; anything else is percent-encoded.
_TARGET_SAFE = "/?&=%:@!$'()*+,;-._~"


class IdempotencyKeyMissing(BadRequest):
    code = "idempotency_key_required"
    title = "This request needs an Idempotency-Key header"


class IdempotencyKeyReused(DomainError):
    status = 422
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was used with a different request"


class IdempotencyInFlight(DomainError):
    status = 409
    code = "idempotency_request_in_flight"
    title = "A request with this Idempotency-Key is still being processed"


async def _require_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="Unique per intended operation; retries reuse it (kept 24 hours).",
            json_schema_extra={REQUIRED_MARK: True},
        ),
    ] = None,
) -> str:
    if not idempotency_key:
        raise IdempotencyKeyMissing()
    return idempotency_key


IdempotencyKeyRequired = Annotated[str, Depends(_require_key)]
_FRESH = "idempotency_key_fresh"


async def _fresh(request: Request) -> bool:
    return bool(request.scope.get("state", {}).get(_FRESH, False))


# True when the request's key was new: no earlier request with it ran, so nothing one did can
# exist yet. False without a key, and for a key taken over from a request whose process died
# (a resumption) or reused after it expired.
FreshKey = Annotated[bool, Depends(_fresh)]
Stored = tuple[int, list[tuple[str, str]], bytes]
IDEMPOTENCY_ERRORS = (IdempotencyKeyMissing, IdempotencyKeyReused, IdempotencyInFlight)


# A refusal an endpoint can give before its key is claimed, from what the process already
# knows (a campaign it found sold out a moment ago): called with the request's scope, its
# body and the verified caller (None without a valid token). It returns the error the
# endpoint would answer, or None to let the request run as usual. It must be a refusal the
# endpoint gives with nothing written and nothing stored (a 409): answered from here, the key
# is not claimed, and a retry runs again, as after any 409.
PreClaimCheck = Callable[[Scope, bytes, Principal | None], Awaitable[DomainError | None]]


@dataclass(frozen=True, slots=True)
class PreClaim:
    """A :data:`PreClaimCheck` for the POSTs whose path fully matches ``pattern``: those of
    the route ``path`` (its template, which the request metrics are labelled with)."""

    path: str
    pattern: re.Pattern[str]
    check: PreClaimCheck


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, prechecks: Sequence[PreClaim] = ()) -> None:
        self.app = app
        self.prechecks = tuple(prechecks)

    async def _refusal(self, scope: Scope, body: bytes) -> DomainError | None:
        for pre in self.prechecks:
            if pre.pattern.fullmatch(scope["path"]):
                principal = scope["state"].get("principal")
                refusal = await pre.check(
                    scope, body, principal if isinstance(principal, Principal) else None
                )
                if refusal is not None:
                    scope["route"] = pre  # counted under its route, as the endpoint's are
                return refusal
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        keys = [v for k, v in scope["headers"] if k.lower() == _HEADER_BYTES]
        if not keys:
            await self.app(scope, receive, send)
            return
        key = keys[0].decode("latin-1")
        if len(keys) > 1 or not _VALID_KEY.fullmatch(key):
            # One rule for every reader: the endpoint's Header() would read the first of two,
            # a dict the last; a request with two keys is refused before either reads it.
            await send_problem(
                scope,
                send,
                status=400,
                code="idempotency_key_invalid",
                title="The Idempotency-Key header is not valid",
                detail=f"Send exactly one Idempotency-Key of 1 to {_MAX_KEY_LENGTH} printable "
                "ASCII characters.",
            )
            return
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"),
            None,
        )

        body = await read_body(receive)
        if body is None:
            return

        state = scope["app"].state
        path = _printable_target(scope)
        claim = _Claim(
            sessionmaker=cast(async_sessionmaker[AsyncSession], state.sessionmaker),
            single=cast(AsyncEngine, state.autocommit_engine),
            sql=_statements(cast(PlatformTables, state.tables).idempotency_key),
            caller=_caller(
                authorization,
                getattr(state, "token_verifier", None),
                scope.setdefault("state", {}),
            ),
            key=key,
        )
        early = await self._refusal(scope, body) if self.prechecks else None
        if early is not None and not await claim.known():
            # A refusal from memory for a key never used (a used one may have a response to
            # replay): one statement instead of a claim and its release.
            await send_problem(
                scope,
                send,
                status=early.status,
                code=early.code,
                title=early.title,
                detail=early.detail,
                extra=early.extra or None,
            )
            return
        digest = hashlib.sha256(b"POST\n" + path.encode() + b"\n" + body).hexdigest()

        decision, stored = await claim.begin(path, digest)
        if decision == "new":
            scope["state"][_FRESH] = True
            decision = "run"
        refusal = {"mismatch": IdempotencyKeyReused, "in_flight": IdempotencyInFlight}.get(decision)
        if refusal is not None:
            await send_problem(
                scope, send, status=refusal.status, code=refusal.code, title=refusal.title
            )
            return
        if decision == "replay":
            assert stored is not None
            await _send_replay(send, stored)
            return

        sent = False

        async def replay_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured_status = 500
        captured_headers: list[tuple[str, str]] = []
        captured_body: list[bytes] = []
        captured_size = 0
        finished = False

        async def capture(message: Message) -> None:
            nonlocal captured_status, captured_size, finished
            if message["type"] == "http.response.start":
                captured_status = message["status"]
                captured_headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() in _REPLAYED_HEADERS
                )
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                captured_size += len(chunk)
                if captured_size <= MAX_STORED_BODY:
                    captured_body.append(chunk)
                finished = not message.get("more_body", False)
            await send(message)

        heartbeat = asyncio.create_task(claim.keep_locked())
        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await claim.release()
            raise
        finally:
            heartbeat.cancel()
        storable = (
            finished  # a client that went away mid-body did not get the whole answer
            and captured_size <= MAX_STORED_BODY
            and captured_status < 500
            and captured_status not in _NOT_STORED
        )
        if storable:
            await claim.complete(captured_status, captured_headers, b"".join(captured_body))
        else:
            await claim.release()


def _printable_target(scope: Scope) -> str:
    """The request target as printable ASCII (the raw path is percent-encoded already; a NUL
    or other byte the database cannot store is encoded, never stored as it is)."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    query = scope.get("query_string") or b""
    target = raw + (b"?" + query if query else b"")
    return quote(target, safe=_TARGET_SAFE)


async def _send_replay(send: Send, stored: Stored) -> None:
    status, headers, body = stored
    raw_headers = [(k.encode(), v.encode()) for k, v in headers]
    raw_headers.append((b"idempotent-replayed", b"true"))
    raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _caller(
    authorization: str | None, verifier: TokenVerifier | None, request_state: dict[str, Any]
) -> str:
    if authorization and verifier is not None and authorization.lower().startswith("bearer "):
        try:
            principal = verifier.verify(authorization[7:].strip())
        except DomainError:
            return "anonymous"
        # The endpoint's auth dependency reuses it instead of verifying the token again.
        request_state["principal"] = principal
        return "user:" + principal.sub
    return "anonymous"


@dataclass(frozen=True, slots=True)
class _Statements:
    """A table's statements of the usual path, built once: building a statement costs more
    CPU than running it (docs/orders.md, "The hot path"). Parameters are not named like
    columns: in an UPDATE, SQLAlchemy would take such a parameter for a new value."""

    table: Any
    known: Executable
    claim: Executable
    renew: Executable
    complete: Executable
    release: Executable


_BUILT: dict[Any, _Statements] = {}


def _statements(table: Any) -> _Statements:
    built = _BUILT.get(table)
    if built is not None:
        return built
    t = table
    mine = and_(
        t.c.scope == bindparam("b_caller"),
        t.c.key == bindparam("b_key"),
        t.c.owner == bindparam("b_owner"),
    )
    built = _Statements(
        table=t,
        known=select(t.c.key).where(
            t.c.scope == bindparam("b_caller"), t.c.key == bindparam("b_key")
        ),
        claim=insert(t)
        .values(
            scope=bindparam("b_caller"),
            key=bindparam("b_key"),
            method="POST",
            path=bindparam("b_path"),
            request_hash=bindparam("b_request_hash"),
            status="started",
            owner=bindparam("b_owner"),
            response_status=None,
            response_headers=None,
            response_body=None,
            locked_until=func.now() + LOCK_TIMEOUT,
            created_at=func.now(),
            expires_at=func.now() + KEY_TTL,
        )
        .on_conflict_do_nothing()
        .returning(t.c.key),
        renew=update(t)
        .where(mine, t.c.status == "started")
        .values(locked_until=func.now() + LOCK_TIMEOUT),
        complete=update(t)
        .where(mine)
        .values(
            status="completed",
            response_status=bindparam("b_response_status"),
            response_headers=bindparam("b_response_headers"),
            response_body=bindparam("b_response_body"),
        ),
        release=delete(t).where(mine, t.c.status == "started"),
    )
    _BUILT[table] = built
    return built


@dataclass
class _Claim:
    """One request's hold on (caller, key). ``owner`` tells this request's hold from a later
    one's that took over a stale lock, so neither can release or overwrite the other's."""

    sessionmaker: async_sessionmaker[AsyncSession]
    # Single statements (the usual claim, renewals, completion, release) commit on their own,
    # each on a pooled connection without a session around it.
    single: AsyncEngine
    sql: _Statements
    caller: str
    key: str
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def _ids(self) -> dict[str, str]:
        return {"b_caller": self.caller, "b_key": self.key, "b_owner": self.owner}

    async def _single(self, stmt: Executable, params: dict[str, Any]) -> bool:
        """Runs one statement on its own; whether it returned a row."""
        async with self.single.connect() as conn:
            result = await conn.execute(stmt, params)
            return result.returns_rows and result.first() is not None

    async def known(self) -> bool:
        """Whether a request used this key already (whatever became of it)."""
        return await self._single(self.sql.known, {"b_caller": self.caller, "b_key": self.key})

    async def begin(self, path: str, digest: str) -> tuple[str, Stored | None]:
        t = self.sql.table
        claim_params = {**self._ids(), "b_path": path, "b_request_hash": digest}
        # The common case, a new key, is one statement.
        if await self._single(self.sql.claim, claim_params):
            return "new", None
        fresh = {
            "path": path,
            "request_hash": digest,
            "status": "started",
            "owner": self.owner,
            "response_status": None,
            "response_headers": None,
            "response_body": None,
            "locked_until": func.now() + LOCK_TIMEOUT,
            "created_at": func.now(),
            "expires_at": func.now() + KEY_TTL,
        }
        # The row can vanish between the INSERT and the SELECT (released or purged by
        # another transaction): then the INSERT is simply tried again.
        for _ in range(3):
            async with self.sessionmaker() as session, session.begin():
                if (await session.execute(self.sql.claim, claim_params)).first() is not None:
                    return "new", None
                row = (
                    await session.execute(
                        select(
                            t,
                            (t.c.expires_at <= func.now()).label("expired"),
                            (t.c.locked_until <= func.now()).label("stale"),
                        )
                        .where(t.c.scope == self.caller, t.c.key == self.key)
                        .with_for_update()
                    )
                ).first()
                if row is None:
                    continue
                this_key = and_(t.c.scope == self.caller, t.c.key == self.key)
                if row.expired:
                    await session.execute(update(t).where(this_key).values(**fresh))
                    return "run", None
                if row.request_hash != digest:
                    return "mismatch", None
                if row.status == "completed":
                    headers = [(str(k), str(v)) for k, v in (row.response_headers or [])]
                    return "replay", (row.response_status, headers, bytes(row.response_body or b""))
                if not row.stale:
                    return "in_flight", None
                # The request that held it stopped renewing its lock: its process died.
                await session.execute(
                    update(t)
                    .where(this_key)
                    .values(owner=self.owner, locked_until=func.now() + LOCK_TIMEOUT)
                )
                return "run", None
        return "in_flight", None

    async def keep_locked(self) -> None:
        """Renews the lock while the request runs, so a slow request is never taken over."""
        while True:
            await asyncio.sleep(LOCK_TIMEOUT.total_seconds() / 3)
            await self._single(self.sql.renew, self._ids())

    async def complete(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self._single(
            self.sql.complete,
            {
                **self._ids(),
                "b_response_status": status,
                "b_response_headers": [list(h) for h in headers],
                "b_response_body": body,
            },
        )

    async def release(self) -> None:
        await self._single(self.sql.release, self._ids())


async def purge_expired(session: AsyncSession, tables: PlatformTables) -> int:
    t = tables.idempotency_key
    result = await session.execute(delete(t).where(t.c.expires_at < func.now()).returning(t.c.key))
    return len(result.all())
