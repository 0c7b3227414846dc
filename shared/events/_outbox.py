from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events._envelope import Envelope
from shared.observability import current_request_id
from shared.tables import PlatformTables
from shared.wakeup import notify_work


class EventPublisher:
    """Writes events into the caller's transaction: they leave only if it commits."""

    def __init__(self, *, source: str, tables: PlatformTables, subscribers: list[str]) -> None:
        self.source = source
        self.tables = tables
        self.subscribers = subscribers

    async def publish(
        self, session: AsyncSession, event_type: str, payload: dict[str, Any], *, version: int = 1
    ) -> Envelope:
        envelope = Envelope(
            type=event_type,
            source=self.source,
            version=version,
            request_id=current_request_id(),
            payload=payload,
        )
        if self.subscribers:
            body = envelope.model_dump(mode="json")
            await session.execute(
                insert(self.tables.outbox),
                [
                    {
                        "event_id": envelope.id,
                        "event_type": event_type,
                        "subscriber": name,
                        "envelope": body,
                    }
                    for name in self.subscribers
                ],
            )
            await notify_work(session)  # the relay wakes when this transaction commits
        return envelope
