"""``Idempotency-Key`` for POSTs: a replay returns the first response byte for byte.

Rules (the same as the public payment APIs our clients already know):

- Keys are scoped to the caller (the token's subject; ``anonymous`` without a token) and
  kept for :data:`KEY_TTL` (24 hours).
- The same key with a different method, path or body: 422 ``idempotency_key_reused``.
- The same key while the first request is still running: 409 ``idempotency_request_in_flight``.
- A response is stored when the request reached a decision (2xx, and 4xx other than
  401/403/409/429). Other outcomes, 5xx included, roll back with nothing done, so the key is
  released and a retry runs again.
- A process that dies mid-request leaves its key locked for :data:`LOCK_TIMEOUT`; after
  that a retry runs again. The money-moving code under it is itself idempotent (provider
  idempotency keys, unique constraints), so a re-run cannot move money twice.

Endpoints that move money declare :data:`IdempotencyKeyRequired`, so a POST without the
header is refused with 400 ``idempotency_key_required``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Depends, Header
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import TokenVerifier
from shared.errors import PROBLEM_JSON, BadRequest, DomainError
from shared.tables import PlatformTables

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IdempotencyKeyRequired",
    "IdempotencyMiddleware",
    "purge_expired",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
LOCK_TIMEOUT = timedelta(seconds=60)
_MAX_KEY_LENGTH = 255
_NOT_STORED = {401, 403, 409, 429}
_REPLAYED_HEADERS = {"content-type", "location", "content-language"}


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
        ),
    ] = None,
) -> str:
    if not idempotency_key:
        raise IdempotencyKeyMissing()
    return idempotency_key


IdempotencyKeyRequired = Annotated[str, Depends(_require_key)]
IDEMPOTENCY_ERRORS = (IdempotencyKeyMissing, IdempotencyKeyReused, IdempotencyInFlight)


def _problem(status: int, code: str, title: str, request_id: str | None) -> list[Message]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "code": code}
    if request_id:
        body["request_id"] = request_id
    raw = json.dumps(body).encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(raw)).encode()),
            ],
        },
        {"type": "http.response.body", "body": raw},
    ]


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(IDEMPOTENCY_HEADER.lower())
        if key is None:
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        if not key or len(key) > _MAX_KEY_LENGTH:
            for msg in _problem(
                400,
                "idempotency_key_invalid",
                f"Idempotency-Key must be 1 to {_MAX_KEY_LENGTH} characters",
                request_id,
            ):
                await send(msg)
            return

        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)

        state = scope["app"].state
        sessionmaker = cast(async_sessionmaker[AsyncSession], state.sessionmaker)
        table = cast(PlatformTables, state.tables).idempotency_key
        caller = _caller(headers.get("authorization"), getattr(state, "token_verifier", None))
        path = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        digest = hashlib.sha256(b"POST\n" + path.encode() + b"\n" + body).hexdigest()

        decision, stored = await _begin(sessionmaker, table, caller, key, path, digest)
        refusal = {"mismatch": IdempotencyKeyReused, "in_flight": IdempotencyInFlight}.get(decision)
        if refusal is not None:
            for msg in _problem(refusal.status, refusal.code, refusal.title, request_id):
                await send(msg)
            return
        if decision == "replay":
            assert stored is not None
            status, replay_headers, replay_body = stored
            raw_headers = [(k.encode(), v.encode()) for k, v in replay_headers]
            raw_headers.append((b"idempotent-replayed", b"true"))
            raw_headers.append((b"content-length", str(len(replay_body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            await send({"type": "http.response.body", "body": replay_body})
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

        async def capture(message: Message) -> None:
            nonlocal captured_status
            if message["type"] == "http.response.start":
                captured_status = message["status"]
                captured_headers.extend(
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() in _REPLAYED_HEADERS
                )
            elif message["type"] == "http.response.body":
                captured_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await _release(sessionmaker, table, caller, key)
            raise
        if captured_status >= 500 or captured_status in _NOT_STORED:
            await _release(sessionmaker, table, caller, key)
        else:
            await _complete(
                sessionmaker,
                table,
                caller,
                key,
                captured_status,
                captured_headers,
                b"".join(captured_body),
            )


def _caller(authorization: str | None, verifier: TokenVerifier | None) -> str:
    if authorization and verifier is not None and authorization.lower().startswith("bearer "):
        try:
            return "user:" + verifier.verify(authorization[7:].strip()).sub
        except DomainError:
            pass
    return "anonymous"


async def _begin(
    sessionmaker: async_sessionmaker[AsyncSession],
    table: Any,
    caller: str,
    key: str,
    path: str,
    digest: str,
) -> tuple[str, tuple[int, list[tuple[str, str]], bytes] | None]:
    async with sessionmaker() as session, session.begin():
        inserted = await session.execute(
            insert(table)
            .values(
                scope=caller,
                key=key,
                method="POST",
                path=path,
                request_hash=digest,
                status="started",
                locked_until=func.now() + LOCK_TIMEOUT,
                expires_at=func.now() + KEY_TTL,
            )
            .on_conflict_do_nothing()
            .returning(table.c.key)
        )
        if inserted.first() is not None:
            return "run", None
        row = (
            await session.execute(
                select(
                    table,
                    (table.c.expires_at <= func.now()).label("expired"),
                    (table.c.locked_until <= func.now()).label("stale"),
                )
                .where(table.c.scope == caller, table.c.key == key)
                .with_for_update()
            )
        ).one()
        if row.expired:
            await session.execute(
                update(table)
                .where(table.c.scope == caller, table.c.key == key)
                .values(
                    path=path,
                    request_hash=digest,
                    status="started",
                    response_status=None,
                    response_headers=None,
                    response_body=None,
                    locked_until=func.now() + LOCK_TIMEOUT,
                    created_at=func.now(),
                    expires_at=func.now() + KEY_TTL,
                )
            )
            return "run", None
        if row.request_hash != digest:
            return "mismatch", None
        if row.status == "completed":
            headers = [(str(k), str(v)) for k, v in (row.response_headers or [])]
            return "replay", (row.response_status, headers, bytes(row.response_body or b""))
        if not row.stale:
            return "in_flight", None
        await session.execute(
            update(table)
            .where(table.c.scope == caller, table.c.key == key)
            .values(locked_until=func.now() + LOCK_TIMEOUT)
        )
        return "run", None


async def _complete(
    sessionmaker: async_sessionmaker[AsyncSession],
    table: Any,
    caller: str,
    key: str,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(table)
            .where(table.c.scope == caller, table.c.key == key)
            .values(
                status="completed",
                response_status=status,
                response_headers=[list(h) for h in headers],
                response_body=body,
            )
        )


async def _release(
    sessionmaker: async_sessionmaker[AsyncSession], table: Any, caller: str, key: str
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(
            delete(table).where(
                table.c.scope == caller, table.c.key == key, table.c.status == "started"
            )
        )


async def purge_expired(session: AsyncSession, tables: PlatformTables) -> int:
    t = tables.idempotency_key
    result = await session.execute(delete(t).where(t.c.expires_at < func.now()).returning(t.c.key))
    return len(result.all())
