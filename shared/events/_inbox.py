from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import String

from shared.db import SessionDep
from shared.errors import DomainError, Unauthorized, responses
from shared.events._envelope import Envelope
from shared.events._signing import SIGNATURE_HEADER, verify
from shared.events.contracts import EventHandlers, contract_for
from shared.settings import ServiceSettings
from shared.tables import PlatformTables

_log = structlog.get_logger("qunbuy.inbox")

# Events one POST to /internal/events/batch may carry (the relay sends at most
# RelayPolicy.max_events_per_post, 100 by default); the body limit (MAX_BODY_BYTES) applies too.
MAX_BATCH_EVENTS = 500


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


class InvalidEventBatch(DomainError):
    status = 422
    code = "invalid_event_batch"
    title = 'The batch is not {"events": [...]}'


class EventBatchTooLarge(DomainError):
    status = 413
    code = "event_batch_too_large"
    title = f"A batch carries at most {MAX_BATCH_EVENTS} events"


class EventReceipt(BaseModel):
    event_id: str
    status: Literal["applied", "duplicate", "ignored"]


class BatchItemReceipt(BaseModel):
    """The outcome of one event of a batch, at its index. ``rejected`` events changed
    nothing and were not recorded (``code`` and ``detail`` as the single endpoint's 422):
    the relay retries them on their own."""

    event_id: str | None
    status: Literal["applied", "duplicate", "ignored", "rejected"]
    code: str | None = None
    detail: str | None = None


class BatchReceipt(BaseModel):
    results: list[BatchItemReceipt]


class _BatchBody(BaseModel):
    events: list[Any] = Field(min_length=1)


def _fields(exc: ValidationError, known: Any) -> str:
    # Our words and the fields' names only: the sender's input is never echoed.
    return ", ".join(
        sorted(
            {
                str(e["loc"][0]) if e["loc"] and e["loc"][0] in known else "unexpected field"
                for e in exc.errors()
            }
        )
    )


@dataclass(slots=True)
class _Checked:
    envelope: Envelope
    payload: Any  # the contract's model, or None when no handler takes the type


def _check(handlers: EventHandlers, envelope: Envelope) -> _Checked:
    """Validates the payload against its contract; raises the 422 the endpoint answers."""
    if not handlers.handles(envelope.type):
        return _Checked(envelope, None)
    contract = contract_for(envelope.type, envelope.version)
    if contract is None:
        # Refused, not ignored: the relay keeps it (and re-drives it once this service is
        # upgraded), so a newer publisher never loses an event.
        raise UnknownEventVersion(f"{envelope.type} v{envelope.version}")
    try:
        return _Checked(envelope, contract.model_validate(envelope.payload))
    except ValidationError as exc:
        raise InvalidEvent(
            "invalid or missing payload: " + _fields(exc, contract.model_fields)
        ) from exc


async def _record(
    session: AsyncSession, tables: PlatformTables, envelopes: Sequence[Envelope]
) -> set[tuple[str, str]]:
    """Inbox rows for ``envelopes`` (distinct ids); returns the (source, id) pairs that were
    new. In key order, so that two batches sharing events wait for each other instead of
    deadlocking; a concurrent delivery of the same event waits for the first to commit."""
    if len(envelopes) == 1:
        e = envelopes[0]
        inserted = await session.execute(
            insert(tables.inbox)
            .values(source=e.source, event_id=str(e.id), event_type=e.type)
            .on_conflict_do_nothing()
            .returning(tables.inbox.c.source, tables.inbox.c.event_id)
        )
    else:
        rows = sorted((e.source, str(e.id), e.type) for e in envelopes)
        inserted = await session.execute(
            text(
                f"INSERT INTO {tables.inbox.name} (source, event_id, event_type)"  # noqa: S608 - our table
                " SELECT * FROM unnest(:sources, :ids, :types)"
                " ON CONFLICT DO NOTHING RETURNING source, event_id"
            ).bindparams(
                bindparam("sources", [r[0] for r in rows], type_=ARRAY(String)),
                bindparam("ids", [r[1] for r in rows], type_=ARRAY(String)),
                bindparam("types", [r[2] for r in rows], type_=ARRAY(String)),
            )
        )
    return {(str(source), str(event_id)) for source, event_id in inserted}


def inbox_router(handlers: EventHandlers) -> APIRouter:
    """``POST /internal/events`` (one event) and ``POST /internal/events/batch`` (several):
    verify the signature over the whole body, validate each payload against its contract,
    record each id once, apply the new ones in the same transaction."""
    router = APIRouter(tags=["internal"], include_in_schema=True)

    def signed_body(request: Request, body: bytes) -> None:
        settings = cast(ServiceSettings, request.app.state.settings)
        if not verify(settings.event_secret, body, request.headers.get(SIGNATURE_HEADER)):
            raise InvalidSignature()

    @router.post(
        "/internal/events",
        response_model=EventReceipt,
        responses=responses(InvalidSignature, InvalidEvent, UnknownEventVersion),
        summary="Receive an event from another service (HMAC-signed)",
    )
    async def receive_event(request: Request, session: SessionDep) -> EventReceipt:
        tables = cast(PlatformTables, request.app.state.tables)
        body = await request.body()
        signed_body(request, body)
        try:
            envelope = Envelope.model_validate_json(body)
        except ValidationError as exc:
            fields = _fields(exc, Envelope.model_fields)
            raise InvalidEvent("invalid or missing: " + fields) from exc
        checked = _check(handlers, envelope)
        event_id = str(envelope.id)
        if not await _record(session, tables, [envelope]):
            return EventReceipt(event_id=event_id, status="duplicate")
        if checked.payload is None:
            _log.info("event_ignored", event_type=envelope.type, event_id=event_id)
            return EventReceipt(event_id=event_id, status="ignored")
        await handlers.apply(session, [(checked.payload, envelope)])
        return EventReceipt(event_id=event_id, status="applied")

    @router.post(
        "/internal/events/batch",
        response_model=BatchReceipt,
        responses=responses(InvalidSignature, InvalidEventBatch, EventBatchTooLarge),
        summary="Receive several events in one signed body (the relay's batches)",
    )
    async def receive_batch(request: Request, session: SessionDep) -> BatchReceipt:
        """``{"events": [envelope, ...]}``, signed as a whole. Each event is checked and
        recorded on its own: one that breaks its contract is ``rejected`` (nothing of it
        recorded) while the others apply; an id seen before, or twice in the batch, is a
        ``duplicate``. The answer has one result per event, in order."""
        tables = cast(PlatformTables, request.app.state.tables)
        body = await request.body()
        signed_body(request, body)
        try:
            items = _BatchBody.model_validate_json(body).events
        except ValidationError as exc:
            raise InvalidEventBatch() from exc
        if len(items) > MAX_BATCH_EVENTS:
            raise EventBatchTooLarge(f"{len(items)} events", most=MAX_BATCH_EVENTS)
        results: list[BatchItemReceipt | None] = [None] * len(items)
        first: dict[tuple[str, str], int] = {}
        checked: dict[int, _Checked] = {}
        for i, item in enumerate(items):
            try:
                envelope = Envelope.model_validate(item)
            except ValidationError as exc:
                error = InvalidEvent("invalid or missing: " + _fields(exc, Envelope.model_fields))
                results[i] = _rejected(None, error)
                continue
            key = (envelope.source, str(envelope.id))
            if key in first:
                results[i] = BatchItemReceipt(event_id=key[1], status="duplicate")
                continue
            try:
                checked[i] = _check(handlers, envelope)
            except DomainError as error:
                results[i] = _rejected(key[1], error)
                continue
            first[key] = i
        new = await _record(session, tables, [c.envelope for c in checked.values()])
        to_apply: list[tuple[Any, Envelope]] = []
        for i, c in checked.items():
            key = (c.envelope.source, str(c.envelope.id))
            if key not in new:
                results[i] = BatchItemReceipt(event_id=key[1], status="duplicate")
            elif c.payload is None:
                results[i] = BatchItemReceipt(event_id=key[1], status="ignored")
            else:
                results[i] = BatchItemReceipt(event_id=key[1], status="applied")
                to_apply.append((c.payload, c.envelope))
        # One line per batch, with the request ids of its events: a request's id still leads
        # to the service that consumed its events.
        _log.info(
            "event_batch",
            events=len(items),
            applied=len(to_apply),
            request_ids=sorted({rid for c in checked.values() if (rid := c.envelope.request_id)}),
        )
        await handlers.apply(session, to_apply)
        return BatchReceipt(results=[r for r in results if r is not None])

    return router


def _rejected(event_id: str | None, error: DomainError) -> BatchItemReceipt:
    return BatchItemReceipt(
        event_id=event_id, status="rejected", code=error.code, detail=error.detail
    )
