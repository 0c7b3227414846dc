from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.events._signing import SIGNATURE_HEADER, sign
from shared.observability import REQUEST_ID_HEADER
from shared.tables import PlatformTables
from shared.wakeup import wait_for_work

_log = structlog.get_logger("qunbuy.relay")
# A claimed row is invisible to other relays for this long; a relay that dies mid-delivery
# releases its rows when the lease runs out.
LEASE = timedelta(seconds=60)


@dataclass(frozen=True)
class RelayPolicy:
    max_attempts: int = 12
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 600.0
    batch_size: int = 50
    timeout_seconds: float = 10.0

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with +-20% jitter, so that retries from many rows spread out."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempts - 1))
        return float(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto


def _client(policy: RelayPolicy) -> httpx.AsyncClient:
    # trust_env=False: peers are addressed directly; an HTTP(S)_PROXY meant for the outside
    # world must not capture traffic between services.
    return httpx.AsyncClient(timeout=policy.timeout_seconds, trust_env=False)


class OutboxRelay:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        tables: PlatformTables,
        subscribers: dict[str, str],
        secret: str,
        policy: RelayPolicy,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.outbox = tables.outbox
        self.subscribers = subscribers
        self.secret = secret
        self.policy = policy
        self._client = client

    async def _claim(self) -> list[dict[str, Any]]:
        o = self.outbox
        async with self.sessionmaker() as session, session.begin():
            due = (
                select(o.c.id)
                .where(and_(o.c.status == "pending", o.c.next_attempt_at <= func.now()))
                .order_by(o.c.next_attempt_at, o.c.id)
                .limit(self.policy.batch_size)
                .with_for_update(skip_locked=True)
            )
            rows = await session.execute(
                update(o)
                .where(o.c.id.in_(due.scalar_subquery()))
                .values(attempts=o.c.attempts + 1, next_attempt_at=func.now() + LEASE)
                .returning(o.c.id, o.c.subscriber, o.c.envelope, o.c.attempts)
            )
            return [dict(r._mapping) for r in rows]

    async def _deliver(self, client: httpx.AsyncClient, row: dict[str, Any]) -> str | None:
        """None on success, else the error to keep."""
        url = self.subscribers.get(row["subscriber"])
        if url is None:
            return f"no URL configured for subscriber {row['subscriber']!r}"
        body = json.dumps(row["envelope"], separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
        }
        if rid := row["envelope"].get("request_id"):
            headers[REQUEST_ID_HEADER] = rid
        try:
            response = await client.post(f"{url}/internal/events", content=body, headers=headers)
        except Exception as exc:
            # Anything (a bad URL included) is this row's failure: the rest of the batch is
            # settled as usual, and the row dies after max_attempts like any other.
            return f"{type(exc).__name__}: {exc}"[:2000]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:1000]}"

    async def _settle(self, row: dict[str, Any], error: str | None) -> None:
        o = self.outbox
        if error is None:
            values: dict[str, Any] = {
                "status": "delivered",
                "delivered_at": func.now(),
                "last_error": None,
            }
        elif row["attempts"] >= self.policy.max_attempts:
            values = {"status": "dead", "last_error": error}
            _log.warning("event_dead", outbox_id=row["id"], error=error)
        else:
            delay = timedelta(seconds=self.policy.backoff(row["attempts"]))
            values = {"next_attempt_at": func.now() + delay, "last_error": error}
        async with self.sessionmaker() as session, session.begin():
            await session.execute(update(o).where(o.c.id == row["id"]).values(**values))

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many rows were attempted."""
        rows = await self._claim()
        if not rows:
            return 0
        client = self._client or _client(self.policy)
        try:
            errors = await asyncio.gather(*(self._deliver(client, r) for r in rows))
        finally:
            if self._client is None:
                await client.aclose()
        for row, error in zip(rows, errors, strict=True):
            await self._settle(row, error)
        return len(rows)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest pending row is due (0 when one is due now), or None."""
        o = self.outbox
        async with self.sessionmaker() as session:
            seconds = await session.scalar(
                select(func.extract("epoch", func.min(o.c.next_attempt_at) - func.now())).where(
                    o.c.status == "pending"
                )
            )
        return None if seconds is None else max(0.0, float(seconds))

    async def run_forever(
        self, stop: asyncio.Event, poll_seconds: float, wake: asyncio.Event | None = None
    ) -> None:
        """Delivers until ``stop``. Idle, it sleeps until the next retry is due, a publisher's
        NOTIFY sets ``wake``, or ``poll_seconds`` (the safety net) pass."""
        wake = wake or asyncio.Event()
        async with _client(self.policy) as client:
            self._client = client
            while not stop.is_set():
                try:
                    attempted = await self.run_once()
                    delay = poll_seconds
                    if attempted == 0:
                        due = await self.next_due_in()
                        delay = poll_seconds if due is None else min(due, poll_seconds)
                except Exception:
                    _log.exception("relay_error")
                    attempted, delay = 0, poll_seconds
                if attempted == 0:
                    await wait_for_work(wake, stop, delay)


async def redrive_dead(
    session: AsyncSession, tables: PlatformTables, *, ids: list[int] | None = None
) -> int:
    """Put dead rows back in line (all of them, or those ``ids``); returns how many."""
    o = tables.outbox
    stmt = (
        update(o)
        .where(o.c.status == "dead")
        .values(status="pending", attempts=0, next_attempt_at=func.now())
    )
    if ids:
        stmt = stmt.where(o.c.id.in_(ids))
    result = await session.execute(stmt.returning(o.c.id))
    return len(result.all())
