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
    # Rows claimed at once; a subscriber's share goes out in POSTs of at most
    # max_events_per_post events (one event alone: /internal/events, several: .../batch).
    batch_size: int = 200
    max_events_per_post: int = 100
    timeout_seconds: float = 10.0

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with +-20% jitter, so that retries from many rows spread out."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempts - 1))
        return float(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto


# Answers to a batch after which each of its events is sent on its own: the subscriber does
# not take batches (404, 405: not upgraded yet), refused the batch as a whole (413, 422), or
# failed on it (500: one event's handler may be at fault, and must not hold the others back).
# A refused signature (401) or a busy or unreachable database (503) would fail each event
# alike: the batch is retried as it is.
_SEND_ONE_BY_ONE = frozenset({404, 405, 413, 422, 500})


def _client(policy: RelayPolicy) -> httpx.AsyncClient:
    # trust_env=False: peers are addressed directly; an HTTP(S)_PROXY meant for the outside
    # world must not capture traffic between services.
    return httpx.AsyncClient(timeout=policy.timeout_seconds, trust_env=False)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


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
            # The order they were published in: a subscriber's batch keeps it.
            return sorted((dict(r._mapping) for r in rows), key=lambda r: r["id"])

    async def _post(
        self, client: httpx.AsyncClient, url: str, path: str, body: bytes, request_id: str | None
    ) -> httpx.Response:
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return await client.post(f"{url}{path}", content=body, headers=headers)

    async def _deliver(self, client: httpx.AsyncClient, row: dict[str, Any]) -> str | None:
        """One event to /internal/events: None on success, else the error to keep."""
        url = self.subscribers.get(row["subscriber"])
        if url is None:
            return f"no URL configured for subscriber {row['subscriber']!r}"
        try:
            response = await self._post(
                client,
                url,
                "/internal/events",
                _compact(row["envelope"]),
                row["envelope"].get("request_id"),
            )
        except Exception as exc:
            # Anything (a bad URL included) is this row's failure: the rest of the batch is
            # settled as usual, and the row dies after max_attempts like any other.
            return f"{type(exc).__name__}: {exc}"[:2000]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:1000]}"

    async def _deliver_batch(
        self, client: httpx.AsyncClient, rows: list[dict[str, Any]]
    ) -> list[str | None]:
        """Several events of one subscriber in one POST to /internal/events/batch; each row's
        outcome is its event's result (None: delivered). A batch refused or failed as a whole
        falls back to one POST per event (see _SEND_ONE_BY_ONE)."""
        if len(rows) == 1:
            return [await self._deliver(client, rows[0])]
        url = self.subscribers.get(rows[0]["subscriber"])
        if url is None:
            return [f"no URL configured for subscriber {rows[0]['subscriber']!r}"] * len(rows)
        body = _compact({"events": [r["envelope"] for r in rows]})
        try:
            response = await self._post(client, url, "/internal/events/batch", body, None)
        except Exception as exc:
            return [f"{type(exc).__name__}: {exc}"[:2000]] * len(rows)
        if response.status_code in _SEND_ONE_BY_ONE:
            return list(await asyncio.gather(*(self._deliver(client, r) for r in rows)))
        if not 200 <= response.status_code < 300:
            return [f"HTTP {response.status_code}: {response.text[:1000]}"] * len(rows)
        try:
            results = response.json()["results"]
            if len(results) != len(rows):
                raise ValueError(f"{len(results)} results for {len(rows)} events")
            return [
                None
                if result["status"] in ("applied", "duplicate", "ignored")
                else f"HTTP 422: {result.get('code')}: {result.get('detail')}"[:2000]
                for result in results
            ]
        except (ValueError, KeyError, TypeError) as exc:
            return [f"unreadable batch answer: {exc}"[:2000]] * len(rows)

    async def _settle(self, outcomes: list[tuple[dict[str, Any], str | None]]) -> None:
        """Records every outcome of a round in one transaction: the delivered rows in one
        statement, each failure with its own backoff."""
        o = self.outbox
        delivered = [row["id"] for row, error in outcomes if error is None]
        async with self.sessionmaker() as session, session.begin():
            if delivered:
                await session.execute(
                    update(o)
                    .where(o.c.id.in_(delivered))
                    .values(status="delivered", delivered_at=func.now(), last_error=None)
                )
            for row, error in outcomes:
                if error is None:
                    continue
                if row["attempts"] >= self.policy.max_attempts:
                    values: dict[str, Any] = {"status": "dead", "last_error": error}
                    _log.warning("event_dead", outbox_id=row["id"], error=error)
                else:
                    delay = timedelta(seconds=self.policy.backoff(row["attempts"]))
                    values = {"next_attempt_at": func.now() + delay, "last_error": error}
                await session.execute(update(o).where(o.c.id == row["id"]).values(**values))

    def _batches(self, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        by_subscriber: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_subscriber.setdefault(row["subscriber"], []).append(row)
        size = max(1, self.policy.max_events_per_post)
        return [
            mine[i : i + size] for mine in by_subscriber.values() for i in range(0, len(mine), size)
        ]

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many rows were attempted."""
        rows = await self._claim()
        if not rows:
            return 0
        batches = self._batches(rows)
        client = self._client or _client(self.policy)
        try:
            errors = await asyncio.gather(*(self._deliver_batch(client, b) for b in batches))
        finally:
            if self._client is None:
                await client.aclose()
        await self._settle(
            [
                (row, error)
                for batch, found in zip(batches, errors, strict=True)
                for row, error in zip(batch, found, strict=True)
            ]
        )
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
