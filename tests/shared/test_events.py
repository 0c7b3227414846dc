"""The outbox, relay and inbox over real HTTP and real PostgreSQL.

Publisher: the orders database. Subscriber: a service app built from the shared package on
the referrals database, served by uvicorn on a real port, whose handler records an effect
row per event, so "applied exactly once" is a row count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.orders.models import platform as orders_platform
from services.referrals.config import ReferralsSettings
from services.referrals.models import platform as referrals_platform
from shared.app import ServiceSpec, create_service_app
from shared.db import make_engine, sessionmaker_for
from shared.events import (
    SIGNATURE_HEADER,
    Envelope,
    EventHandlers,
    EventPayload,
    EventPublisher,
    OutboxRelay,
    redrive_dead,
    sign,
)
from shared.events._relay import RelayPolicy
from tests.conftest import TEST_EVENT_SECRET, migrated_databases
from tests.helpers import free_port, serve

FAST = RelayPolicy(max_attempts=5, backoff_base_seconds=0.01, backoff_max_seconds=0.05)


class Marked(EventPayload, event_type="test.marked"):
    """A test's own contract."""

    marker: str
    n: int = 0


handlers = EventHandlers()


@handlers.on(Marked)
async def record_effect(session: AsyncSession, event: Marked, envelope: Envelope) -> None:
    await session.execute(
        text("INSERT INTO test_effect (event_id, marker) VALUES (:id, :marker)"),
        {"id": str(envelope.id), "marker": event.marker},
    )


class Poisoned(EventPayload, event_type="test.poisoned"):
    """A test's own contract, whose handler fails (a bug in a handler)."""

    marker: str


@handlers.on(Poisoned)
async def fail(session: AsyncSession, event: Poisoned, envelope: Envelope) -> None:
    raise RuntimeError("a handler's bug")


@dataclass
class Counting:
    """Records the event id of every event POSTed to the subscriber (alone or in a batch),
    duplicates included."""

    app: ASGIApp
    posted_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        self.paths.append(scope["path"])

        async def recording_receive() -> Message:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    posted = json.loads(b"".join(chunks))
                    # One event, or a batch of them (/internal/events/batch).
                    for event in posted.get("events", [posted]):
                        self.posted_ids.append(event["id"])
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def event_db_urls(pg_server_url: str, worker_id_safe: str) -> Iterator[dict[str, str]]:
    """Databases of this module's own: a relay claims whatever is due in its outbox, so no
    other test's rows may be there (the relay's batches would not be this test's alone)."""
    with migrated_databases(pg_server_url, f"qbe_{worker_id_safe}") as urls:
        yield urls


@pytest.fixture(scope="module")
async def engines(
    event_db_urls: dict[str, str],
) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    orders = make_engine(event_db_urls["orders"])
    referrals = make_engine(event_db_urls["referrals"])
    async with referrals.begin() as conn:
        await conn.execute(
            text("CREATE TABLE IF NOT EXISTS test_effect (event_id text, marker text)")
        )
    yield orders, referrals
    await orders.dispose()
    await referrals.dispose()


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def subscriber_app(
    service_env: Callable[..., dict[str, str]], event_db_urls: dict[str, str]
) -> Counting:
    env = service_env("referrals", DATABASE_URL=event_db_urls["referrals"])
    settings = ReferralsSettings.model_validate(env)
    spec = ServiceSpec(
        name="subscriber",
        title="test subscriber",
        tables=referrals_platform,
        event_handlers=handlers,
    )
    return Counting(create_service_app(spec, settings))


def publisher() -> EventPublisher:
    return EventPublisher(source="orders", tables=orders_platform, subscribers=["referrals"])


def relay(
    maker: async_sessionmaker[AsyncSession], url: str, policy: RelayPolicy = FAST
) -> OutboxRelay:
    return OutboxRelay(
        sessionmaker=maker,
        tables=orders_platform,
        subscribers={"referrals": url},
        secret=TEST_EVENT_SECRET,
        policy=policy,
    )


async def publish(
    maker: async_sessionmaker[AsyncSession], marker: str, n: int = 1
) -> list[Envelope]:
    async with maker() as session, session.begin():
        return [await publisher().publish(session, Marked(marker=marker, n=i)) for i in range(n)]


async def effects(engine: AsyncEngine, marker: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id, count(*) FROM test_effect WHERE marker = :m GROUP BY event_id"),
            {"m": marker},
        )
        return {r[0]: r[1] for r in rows}


async def outbox_rows(engine: AsyncEngine, events: list[Envelope]) -> list[dict[str, Any]]:
    o = orders_platform.outbox
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(o).where(o.c.event_id.in_([e.id for e in events])).order_by(o.c.id)
        )
        return [dict(r._mapping) for r in rows]


async def drain(
    r: OutboxRelay, engine: AsyncEngine, events: list[Envelope], rounds: int = 50
) -> None:
    """Runs the relay until every row of ``events`` has left 'pending'."""
    for _ in range(rounds):
        await r.run_once()
        rows = await outbox_rows(engine, events)
        if all(row["status"] != "pending" for row in rows):
            return
        await asyncio.sleep(0.03)
    raise AssertionError(f"still pending after {rounds} rounds: {rows}")


class TestDelivery:
    async def test_subscriber_down_then_back_delivers_each_event_once(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        events = await publish(maker, marker, n=3)
        port = free_port()
        r = relay(maker, f"http://127.0.0.1:{port}")

        assert await r.run_once() >= 3  # nobody listens on the port yet
        rows = await outbox_rows(orders, events)
        assert [row["status"] for row in rows] == ["pending"] * 3
        assert all(row["attempts"] == 1 and "ConnectError" in row["last_error"] for row in rows)

        async with serve(subscriber_app, port):
            await asyncio.sleep(0.06)  # past the (fast) backoff
            await drain(r, orders, events)

        rows = await outbox_rows(orders, events)
        assert [row["status"] for row in rows] == ["delivered"] * 3
        assert all(row["attempts"] >= 2 and row["last_error"] is None for row in rows)
        assert await effects(referrals, marker) == {str(e.id): 1 for e in events}

    async def test_two_relays_in_parallel_deliver_each_row_once(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        events = await publish(maker, marker, n=40)
        port = free_port()
        async with serve(subscriber_app, port) as url:
            relays = [relay(maker, url), relay(maker, url)]
            for _ in range(20):
                await asyncio.gather(*(x.run_once() for x in relays))
                if all(r["status"] == "delivered" for r in await outbox_rows(orders, events)):
                    break
        assert await effects(referrals, marker) == {str(e.id): 1 for e in events}
        # SKIP LOCKED: no row was claimed by both relays, so no event was POSTed twice.
        ours = {str(e.id) for e in events}
        posted = [i for i in subscriber_app.posted_ids if i in ours]
        assert sorted(posted) == sorted(ours)

    async def test_rolled_back_transaction_publishes_nothing(
        self, engines: tuple[AsyncEngine, AsyncEngine], marker: str
    ) -> None:
        orders, _ = engines
        maker = sessionmaker_for(orders)
        published: list[Envelope] = []

        async def fail_after_publishing() -> None:
            async with maker() as session, session.begin():
                event = await publisher().publish(session, Marked(marker=marker))
                published.append(event)
                raise RuntimeError("business rule failed")

        with pytest.raises(RuntimeError, match="business rule failed"):
            await fail_after_publishing()
        assert published  # the event was built...
        assert await outbox_rows(orders, published) == []  # ...but never stored

    async def test_dead_after_max_attempts_keeps_error_and_can_be_redriven(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        events = await publish(maker, marker)
        port = free_port()
        policy = RelayPolicy(max_attempts=2, backoff_base_seconds=0.01, backoff_max_seconds=0.01)
        r = relay(maker, f"http://127.0.0.1:{port}", policy)
        await drain(r, orders, events)
        [row] = await outbox_rows(orders, events)
        assert row["status"] == "dead"
        assert row["attempts"] == 2
        assert "ConnectError" in row["last_error"]
        assert await effects(referrals, marker) == {}

        async with maker() as session, session.begin():
            assert await redrive_dead(session, orders_platform, ids=[row["id"]]) == 1
        async with serve(subscriber_app, port):
            await drain(r, orders, events)
        [row] = await outbox_rows(orders, events)
        assert row["status"] == "delivered"
        assert await effects(referrals, marker) == {str(events[0].id): 1}

    async def test_subscriber_error_is_retried_with_backoff(
        self, engines: tuple[AsyncEngine, AsyncEngine], marker: str
    ) -> None:
        orders, _ = engines
        maker = sessionmaker_for(orders)
        events = await publish(maker, marker)
        calls = 0

        async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
            """Fails our event's first delivery with 503; accepts everything else."""
            nonlocal calls
            if scope["type"] != "http":
                return
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            status = 200
            if str(events[0].id).encode() in body:
                calls += 1
                status = 503 if calls == 1 else 200
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        async with serve(flaky, free_port()) as url:
            r = relay(maker, url, RelayPolicy(max_attempts=5, backoff_base_seconds=0.3))
            await r.run_once()
            [row] = await outbox_rows(orders, events)
            assert row["status"] == "pending"
            assert row["last_error"].startswith("HTTP 503")
            await r.run_once()  # not due yet: the backoff holds it back
            assert calls == 1
            await asyncio.sleep(0.4)
            await drain(r, orders, events)
        assert calls == 2


class TestInbox:
    def signed(
        self, envelope: Envelope, secret: str = TEST_EVENT_SECRET
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(envelope.model_dump(mode="json")).encode()
        return body, {SIGNATURE_HEADER: sign(secret, body), "content-type": "application/json"}

    @pytest.fixture
    async def client(self, subscriber_app: Counting) -> AsyncIterator[httpx.AsyncClient]:
        from tests.conftest import running

        async with running(subscriber_app.app) as c:  # type: ignore[arg-type]
            yield c

    async def test_duplicate_deliveries_have_no_effect(
        self, client: httpx.AsyncClient, engines: tuple[AsyncEngine, AsyncEngine], marker: str
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", payload={"marker": marker})
        body, headers = self.signed(envelope)
        first = await client.post("/internal/events", content=body, headers=headers)
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "applied"
        # The same event again, ten times at once.
        again = await asyncio.gather(
            *(client.post("/internal/events", content=body, headers=headers) for _ in range(10))
        )
        assert {r.json()["status"] for r in again} == {"duplicate"}
        assert await effects(engines[1], marker) == {str(envelope.id): 1}

    async def test_concurrent_first_deliveries_apply_once(
        self, client: httpx.AsyncClient, engines: tuple[AsyncEngine, AsyncEngine], marker: str
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", payload={"marker": marker})
        body, headers = self.signed(envelope)
        results = await asyncio.gather(
            *(client.post("/internal/events", content=body, headers=headers) for _ in range(10))
        )
        statuses = sorted(r.json()["status"] for r in results)
        assert statuses == ["applied"] + ["duplicate"] * 9
        assert await effects(engines[1], marker) == {str(envelope.id): 1}

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "t=1,v1=00",
            "garbage",
            "wrong-secret",
            "stale",
        ],
    )
    async def test_bad_or_missing_signature_is_401_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        engines: tuple[AsyncEngine, AsyncEngine],
        marker: str,
        header: str | None,
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", payload={"marker": marker})
        body, headers = self.signed(envelope)
        if header is None:
            del headers[SIGNATURE_HEADER]
        elif header == "wrong-secret":
            headers[SIGNATURE_HEADER] = sign("another-secret", body)
        elif header == "stale":
            headers[SIGNATURE_HEADER] = sign(TEST_EVENT_SECRET, body, timestamp=1_000_000)
        else:
            headers[SIGNATURE_HEADER] = header
        response = await client.post("/internal/events", content=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_signature"
        inbox = referrals_platform.inbox
        async with engines[1].connect() as conn:
            seen = await conn.scalar(
                select(func.count()).select_from(inbox).where(inbox.c.event_id == str(envelope.id))
            )
        assert seen == 0
        assert await effects(engines[1], marker) == {}

    async def test_tampered_body_is_rejected(
        self, client: httpx.AsyncClient, engines: tuple[AsyncEngine, AsyncEngine], marker: str
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", payload={"marker": marker})
        body, headers = self.signed(envelope)
        tampered = body.replace(marker.encode(), b"x" * len(marker))
        response = await client.post("/internal/events", content=tampered, headers=headers)
        assert response.status_code == 401
        assert await effects(engines[1], marker) == {}

    async def test_signed_but_malformed_envelope_is_422(self, client: httpx.AsyncClient) -> None:
        body = b'{"type": "not an event"}'
        response = await client.post(
            "/internal/events",
            content=body,
            headers={SIGNATURE_HEADER: sign(TEST_EVENT_SECRET, body)},
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_event"

    @pytest.mark.parametrize(
        "payload", [{"marker": 5}, {}, {"marker": "m", "n": "many"}, {"marker": "m", "x": 1}]
    )
    async def test_a_payload_that_breaks_its_contract_is_422_and_records_nothing(
        self,
        client: httpx.AsyncClient,
        engines: tuple[AsyncEngine, AsyncEngine],
        payload: dict[str, object],
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", payload=payload)
        body, headers = self.signed(envelope)
        response = await client.post("/internal/events", content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_event"
        assert "many" not in response.json()["detail"]
        inbox = referrals_platform.inbox
        async with engines[1].connect() as conn:
            seen = await conn.scalar(
                select(func.count()).select_from(inbox).where(inbox.c.event_id == str(envelope.id))
            )
        assert seen == 0

    async def test_an_unknown_version_of_a_handled_type_is_refused_for_a_later_retry(
        self, client: httpx.AsyncClient
    ) -> None:
        envelope = Envelope(type="test.marked", source="orders", version=2, payload={})
        body, headers = self.signed(envelope)
        response = await client.post("/internal/events", content=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == "unknown_event_version"

    async def test_unknown_event_type_is_recorded_and_ignored(
        self, client: httpx.AsyncClient
    ) -> None:
        envelope = Envelope(type="order.shipped", source="orders", payload={})
        body, headers = self.signed(envelope)
        first = await client.post("/internal/events", content=body, headers=headers)
        second = await client.post("/internal/events", content=body, headers=headers)
        assert (first.json()["status"], second.json()["status"]) == ("ignored", "duplicate")


async def test_relay_signs_with_the_shared_secret(
    engines: tuple[AsyncEngine, AsyncEngine], marker: str, subscriber_app: Counting
) -> None:
    """A relay with the wrong secret is refused by the subscriber and keeps retrying."""
    orders, referrals = engines
    maker = sessionmaker_for(orders)
    events = await publish(maker, marker)
    async with serve(subscriber_app, free_port()) as url:
        bad = OutboxRelay(
            sessionmaker=maker,
            tables=orders_platform,
            subscribers={"referrals": url},
            secret="not-the-secret",
            policy=FAST,
        )
        await bad.run_once()
    [row] = await outbox_rows(orders, events)
    assert row["status"] == "pending"
    assert row["last_error"].startswith("HTTP 401")
    assert await effects(referrals, marker) == {}
    # Tidy: this row would otherwise be picked up by other tests' relays.
    o = orders_platform.outbox
    async with orders.begin() as conn:
        await conn.execute(update(o).where(o.c.id == row["id"]).values(status="dead"))


async def test_a_broken_subscriber_url_fails_its_rows_only_and_they_die(
    engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
) -> None:
    """An error that is not an HTTP error (an invalid URL) is that row's failure: the
    healthy subscriber's row in the same batch is delivered once, the broken one dies."""
    orders, referrals = engines
    maker = sessionmaker_for(orders)
    two = EventPublisher(
        source="orders", tables=orders_platform, subscribers=["referrals", "broken"]
    )
    async with maker() as session, session.begin():
        event = await two.publish(session, Marked(marker=marker))
    policy = RelayPolicy(max_attempts=2, backoff_base_seconds=0.01, backoff_max_seconds=0.01)
    async with serve(subscriber_app) as url:
        r = OutboxRelay(
            sessionmaker=maker,
            tables=orders_platform,
            subscribers={"referrals": url, "broken": "http://referrals:8003x"},
            secret=TEST_EVENT_SECRET,
            policy=policy,
        )
        await drain(r, orders, [event])
    rows = {row["subscriber"]: row for row in await outbox_rows(orders, [event])}
    assert rows["referrals"]["status"] == "delivered"
    assert rows["broken"]["status"] == "dead"
    assert rows["broken"]["attempts"] == 2
    assert "InvalidURL" in rows["broken"]["last_error"]
    assert subscriber_app.posted_ids.count(str(event.id)) == 1
    assert await effects(referrals, marker) == {str(event.id): 1}


@pytest.mark.parametrize("given", ["é", "\u00e9" * 64, "ünïcödé", "\x00"])
def test_non_ascii_signatures_are_refused_not_crashed(given: str) -> None:
    from shared.events import verify

    body = b"{}"
    ts = sign(TEST_EVENT_SECRET, body).split(",")[0]
    assert verify(TEST_EVENT_SECRET, body, f"{ts},v1={given}") is False


async def test_the_relay_ignores_proxy_settings_for_peers(
    engines: tuple[AsyncEngine, AsyncEngine],
    subscriber_app: Counting,
    marker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy meant for the outside world (here: nothing listens) must not carry
    # traffic between services.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    orders, referrals = engines
    maker = sessionmaker_for(orders)
    events = await publish(maker, marker)
    async with serve(subscriber_app) as url:
        await drain(relay(maker, url), orders, events)
    assert await effects(referrals, marker) == {str(events[0].id): 1}


class TestBatches:
    async def test_a_subscribers_due_events_go_in_batches_each_applied_once(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        events = await publish(maker, marker, n=25)
        policy = RelayPolicy(max_attempts=5, max_events_per_post=10, backoff_base_seconds=0.01)
        async with serve(subscriber_app) as url:
            await drain(relay(maker, url, policy), orders, events)
        assert [row["status"] for row in await outbox_rows(orders, events)] == ["delivered"] * 25
        assert await effects(referrals, marker) == {str(e.id): 1 for e in events}
        # 10 + 10 + 5: three POSTs, none of one event alone.
        assert subscriber_app.paths.count("/internal/events/batch") >= 3
        ours = {str(e.id) for e in events}
        assert sorted(i for i in subscriber_app.posted_ids if i in ours) == sorted(ours)

    async def test_a_batch_that_fails_is_sent_again_one_event_a_post(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        """A handler's bug (500) on one event of a batch holds back only that event."""
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        async with maker() as session, session.begin():
            good = [
                await publisher().publish(session, Marked(marker=marker, n=i)) for i in range(3)
            ]
            poison = await publisher().publish(session, Poisoned(marker=marker))
        async with serve(subscriber_app) as url:
            await relay(maker, url).run_once()
        rows = {row["event_id"]: row for row in await outbox_rows(orders, [*good, poison])}
        assert [rows[e.id]["status"] for e in good] == ["delivered"] * 3
        assert rows[poison.id]["status"] == "pending"
        assert rows[poison.id]["last_error"].startswith("HTTP 500")
        assert await effects(referrals, marker) == {str(e.id): 1 for e in good}
        o = orders_platform.outbox
        async with orders.begin() as conn:  # tidy: no other test's relay should meet it
            await conn.execute(update(o).where(o.c.event_id == poison.id).values(status="dead"))

    async def test_an_event_the_subscriber_rejects_is_retried_alone(
        self, engines: tuple[AsyncEngine, AsyncEngine], subscriber_app: Counting, marker: str
    ) -> None:
        orders, referrals = engines
        maker = sessionmaker_for(orders)
        good = await publish(maker, marker, n=2)
        broken = Envelope(type="test.marked", source="orders", payload={"marker": 5})
        o = orders_platform.outbox
        async with orders.begin() as conn:  # a publisher with an older contract, say
            await conn.execute(
                o.insert().values(
                    event_id=broken.id,
                    event_type=broken.type,
                    subscriber="referrals",
                    envelope=broken.model_dump(mode="json"),
                )
            )
        async with serve(subscriber_app) as url:
            await relay(maker, url).run_once()
        rows = {row["event_id"]: row for row in await outbox_rows(orders, [*good, broken])}
        assert [rows[e.id]["status"] for e in good] == ["delivered"] * 2
        assert rows[broken.id]["status"] == "pending"
        assert rows[broken.id]["attempts"] == 1
        assert rows[broken.id]["last_error"].startswith("HTTP 422: invalid_event")
        assert await effects(referrals, marker) == {str(e.id): 1 for e in good}
        async with orders.begin() as conn:
            await conn.execute(update(o).where(o.c.event_id == broken.id).values(status="dead"))
