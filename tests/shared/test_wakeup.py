"""The worker wakes on NOTIFY: events leave at once after commit, never before, and the
listener comes back when its connection drops. The safety-net poll is set to 30 s here, so
a prompt delivery can only come from the notification."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.orders.models import platform
from shared.events import EventPayload, EventPublisher
from shared.wakeup import WorkSignal
from tests.conftest import migrated_databases, running, settings_for
from tests.helpers import free_port, serve

received: asyncio.Queue[float] = asyncio.Queue()


class Woken(EventPayload, event_type="test.woken"):
    n: int


async def inbox(request: Request) -> JSONResponse:
    await request.body()
    received.put_nowait(time.monotonic())
    return JSONResponse({"event_id": "x", "status": "applied"})


receiver = Starlette(routes=[Route("/internal/events", inbox, methods=["POST"])])


@pytest.fixture(scope="module")
def own_db(pg_server_url: str, worker_id_safe: str) -> Iterator[dict[str, str]]:
    with migrated_databases(pg_server_url, f"qbw_{worker_id_safe}") as urls:
        yield urls


@pytest.fixture
async def worker_app(
    service_env: Callable[..., dict[str, str]], own_db: dict[str, str]
) -> AsyncIterator[object]:
    from services.orders.app import create_app

    async with serve(receiver, free_port()) as url:
        env = service_env(
            "orders",
            DATABASE_URL=own_db["orders"],
            WORKER_ENABLED="true",
            WORKER_POLL_SECONDS="30",
            EVENT_SUBSCRIBERS=f"receiver={url}",
        )
        app = create_app(settings_for("orders", env))
        async with running(app):
            signal: WorkSignal = app.state.work_signal
            await asyncio.wait_for(signal.connected.wait(), 10)
            while not received.empty():
                received.get_nowait()
            yield app


async def _publish(app: object, *, hold_open: float = 0.0) -> float:
    publisher = EventPublisher(source="orders", tables=platform, subscribers=["receiver"])
    async with app.state.sessionmaker() as session, session.begin():  # type: ignore[attr-defined]
        await publisher.publish(session, Woken(n=1))
        if hold_open:
            await asyncio.sleep(hold_open)
            assert received.empty(), "an event left before its transaction committed"
    return time.monotonic()


async def test_an_event_is_delivered_right_after_commit_and_not_before(worker_app: object) -> None:
    committed = await _publish(worker_app, hold_open=1.0)
    delivered = await asyncio.wait_for(received.get(), 5)
    assert delivered - committed < 2.0


async def test_the_listener_comes_back_after_its_connection_drops(worker_app: object) -> None:
    signal: WorkSignal = worker_app.state.work_signal  # type: ignore[attr-defined]
    async with worker_app.state.sessionmaker() as session, session.begin():  # type: ignore[attr-defined]
        killed = await session.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )
    assert killed == 1
    deadline = time.monotonic() + 10
    while signal.connected.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 - the listener task's state
        await asyncio.sleep(0.05)
    await asyncio.wait_for(signal.connected.wait(), 10)

    committed = await _publish(worker_app)
    delivered = await asyncio.wait_for(received.get(), 5)
    assert delivered - committed < 2.0
