"""Wake the worker loop when there is work: PostgreSQL LISTEN/NOTIFY, a slow poll as the net.

Whatever creates due work (an outbox row, a simulated provider's event) calls
:func:`notify_work` in its own transaction; PostgreSQL delivers the notification when, and
only if, that transaction commits. Each process holds one listening connection (its own
small pool, never a request's connection), re-established when it drops; after a reconnect
every waiter is woken once, since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

__all__ = ["CHANNEL", "WorkSignal", "notify_work", "wait_for_work"]

CHANNEL = "qunbuy_work"
_log = structlog.get_logger("qunbuy.wakeup")
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")


async def notify_work(session: AsyncSession) -> None:
    """Wakes the workers when the caller's transaction commits (and never if it rolls back)."""
    await session.execute(_NOTIFY)


class WorkSignal:
    """One listening connection per process; any number of waiters."""

    def __init__(self, engine: AsyncEngine, *, retry_seconds: float = 1.0) -> None:
        self._engine = engine
        self._retry = retry_seconds
        self._waiters: list[asyncio.Event] = []
        self.connected = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.append(event)
        return event

    def _wake_all(self, *_: Any) -> None:
        for event in self._waiters:
            event.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Listens until ``stop``; reconnects (after ``retry_seconds``) when the connection
        drops or cannot be made."""
        while not stop.is_set():
            try:
                await self._listen(stop)
            except Exception as exc:
                _log.warning("listener_unavailable", error=type(exc).__name__)
            self.connected.clear()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._retry)

    async def _listen(self, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            driver.add_termination_listener(lambda _: lost.set())
            await driver.add_listener(CHANNEL, self._wake_all)
            self.connected.set()
            self._wake_all()  # anything committed while nobody listened
            stopping = asyncio.ensure_future(stop.wait())
            dropped = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({stopping, dropped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                dropped.cancel()
            if lost.is_set():
                await conn.invalidate()
                _log.warning("listener_connection_lost")
            else:
                with contextlib.suppress(Exception):
                    await driver.remove_listener(CHANNEL, self._wake_all)


async def wait_for_work(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    """Returns when ``event`` is set (and clears it), ``stop`` is set, or ``seconds`` pass."""
    if seconds > 0 and not event.is_set():
        woken = asyncio.ensure_future(event.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {woken, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            stopping.cancel()
    event.clear()
