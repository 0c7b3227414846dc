from __future__ import annotations

from typing import Literal, cast

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.dialects.postgresql import insert

from shared.db import SessionDep
from shared.errors import DomainError, Unauthorized, responses
from shared.events._envelope import Envelope
from shared.events._signing import SIGNATURE_HEADER, verify
from shared.events.contracts import EventHandlers, contract_for
from shared.settings import ServiceSettings
from shared.tables import PlatformTables

_log = structlog.get_logger("qunbuy.inbox")


class InvalidSignature(Unauthorized):
    code = "invalid_signature"
    title = "The event signature is missing or does not verify"


class InvalidEvent(DomainError):
    status = 422
    code = "invalid_event"
    title = "The event envelope is not valid"


class UnknownEventVersion(DomainError):
    status = 422
    code = "unknown_event_version"
    title = "This service does not know this version of the event yet"


class EventReceipt(BaseModel):
    event_id: str
    status: Literal["applied", "duplicate", "ignored"]


def inbox_router(handlers: EventHandlers) -> APIRouter:
    """``POST /internal/events``: verify, validate the payload against its contract, record
    the id once, apply in the same transaction."""
    router = APIRouter(tags=["internal"], include_in_schema=True)

    @router.post(
        "/internal/events",
        response_model=EventReceipt,
        responses=responses(InvalidSignature, InvalidEvent, UnknownEventVersion),
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
        handler = handlers.handler(envelope.type)
        payload = None
        if handler is not None:
            contract = contract_for(envelope.type, envelope.version)
            if contract is None:
                # Refused, not ignored: the relay keeps it (and re-drives it once this service
                # is upgraded), so a newer publisher never loses an event.
                raise UnknownEventVersion(f"{envelope.type} v{envelope.version}")
            try:
                payload = contract.model_validate(envelope.payload)
            except ValidationError as exc:
                fields = sorted(
                    {
                        str(e["loc"][0])
                        if e["loc"] and e["loc"][0] in contract.model_fields
                        else "unexpected field"
                        for e in exc.errors()
                    }
                )
                raise InvalidEvent("invalid or missing payload: " + ", ".join(fields)) from exc
        inserted = await session.execute(
            insert(tables.inbox)
            .values(source=envelope.source, event_id=str(envelope.id), event_type=envelope.type)
            .on_conflict_do_nothing()
            .returning(tables.inbox.c.event_id)
        )
        if inserted.first() is None:
            return EventReceipt(event_id=str(envelope.id), status="duplicate")
        if handler is None:
            _log.info("event_ignored", event_type=envelope.type, event_id=str(envelope.id))
            return EventReceipt(event_id=str(envelope.id), status="ignored")
        await handler(session, payload, envelope)
        return EventReceipt(event_id=str(envelope.id), status="applied")

    return router
