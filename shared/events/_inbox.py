from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, cast

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import SessionDep
from shared.errors import DomainError, Unauthorized, responses
from shared.events._envelope import Envelope
from shared.events._signing import SIGNATURE_HEADER, verify
from shared.settings import ServiceSettings
from shared.tables import PlatformTables

EventHandler = Callable[[AsyncSession, Envelope], Awaitable[None]]
_log = structlog.get_logger("qunbuy.inbox")


class InvalidSignature(Unauthorized):
    code = "invalid_signature"
    title = "The event signature is missing or does not verify"


class InvalidEvent(DomainError):
    status = 422
    code = "invalid_event"
    title = "The event envelope is not valid"


class EventReceipt(BaseModel):
    event_id: str
    status: Literal["applied", "duplicate", "ignored"]


def inbox_router(handlers: Mapping[str, EventHandler]) -> APIRouter:
    """``POST /internal/events``: verify, record the id once, apply in the same transaction."""
    router = APIRouter(tags=["internal"], include_in_schema=True)

    @router.post(
        "/internal/events",
        response_model=EventReceipt,
        responses=responses(InvalidSignature, InvalidEvent),
        summary="Receive an event from another service (HMAC-signed)",
    )
    async def receive_event(request: Request, session: SessionDep) -> EventReceipt:
        settings = cast(ServiceSettings, request.app.state.settings)
        tables = cast(PlatformTables, request.app.state.tables)
        body = await request.body()
        if not verify(settings.event_secret, body, request.headers.get(SIGNATURE_HEADER)):
            raise InvalidSignature()
        try:
            envelope = Envelope.model_validate_json(body)
        except ValidationError as exc:
            # Our words and the fields' names only: the sender's input is never echoed.
            known = Envelope.model_fields
            fields = sorted(
                {
                    str(e["loc"][0]) if e["loc"] and e["loc"][0] in known else "unexpected field"
                    for e in exc.errors()
                }
            )
            raise InvalidEvent("invalid or missing: " + ", ".join(fields)) from exc
        inserted = await session.execute(
            insert(tables.inbox)
            .values(source=envelope.source, event_id=str(envelope.id), event_type=envelope.type)
            .on_conflict_do_nothing()
            .returning(tables.inbox.c.event_id)
        )
        if inserted.first() is None:
            return EventReceipt(event_id=str(envelope.id), status="duplicate")
        handler = handlers.get(envelope.type)
        if handler is None:
            _log.info("event_ignored", event_type=envelope.type, event_id=str(envelope.id))
            return EventReceipt(event_id=str(envelope.id), status="ignored")
        await handler(session, envelope)
        return EventReceipt(event_id=str(envelope.id), status="applied")

    return router
