from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events._envelope import Envelope
from shared.events.contracts import EventPayload, contract_for
from shared.observability import current_request_id
from shared.tables import PlatformTables
from shared.wakeup import notify_work


class EventPublisher:
    """Writes events into the caller's transaction: they leave only if it commits."""

    def __init__(self, *, source: str, tables: PlatformTables, subscribers: list[str]) -> None:
        self.source = source
        self.tables = tables
        self.subscribers = subscribers

    async def publish(self, session: AsyncSession, payload: EventPayload) -> Envelope:
        """Writes ``payload``'s event into the caller's transaction; its type and version are
        the contract's (shared/events/contracts.py)."""
        if contract_for(payload.event_type, payload.version) is not type(payload):
            raise TypeError(f"{type(payload).__name__} is not a registered event contract")
        envelope = Envelope(
            type=payload.event_type,
            source=self.source,
            version=payload.version,
            request_id=current_request_id(),
            payload=payload.model_dump(mode="json"),
        )
        if self.subscribers:
            body = envelope.model_dump(mode="json")
            await session.execute(
                insert(self.tables.outbox),
                [
                    {
                        "event_id": envelope.id,
                        "event_type": envelope.type,
                        "subscriber": name,
                        "envelope": body,
                    }
                    for name in self.subscribers
                ],
            )
            await notify_work(session)  # the relay wakes when this transaction commits
        return envelope
