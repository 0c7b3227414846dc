"""Idempotency-Key handling through a real service app on real PostgreSQL.

The endpoint under test creates a row per effect and is slow on purpose, so concurrent
requests with the same key overlap while the first is still running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text, update

from services.orders.config import OrdersSettings
from services.orders.models import platform
from shared.app import ServiceSpec, create_service_app
from shared.auth import CurrentUser
from shared.db import SessionDep
from shared.errors import Conflict
from shared.idempotency import IdempotencyKeyRequired
from tests.conftest import TokenFactory, running

router = APIRouter()
_fail_once: set[str] = set()


class ThingIn(BaseModel):
    marker: str
    amount: int = Field(gt=0)
    delay: float = 0.3


class ThingOut(BaseModel):
    id: str
    marker: str
    amount: int


class Refused(Conflict):
    code = "thing_refused"


@router.post("/things", status_code=201, response_model=ThingOut)
async def create_thing(
    body: ThingIn, session: SessionDep, user: CurrentUser, key: IdempotencyKeyRequired
) -> ThingOut:
    thing_id = uuid.uuid4().hex
    await session.execute(
        text("INSERT INTO test_thing (id, marker, owner) VALUES (:id, :m, :o)"),
        {"id": thing_id, "m": body.marker, "o": user.sub},
    )
    await asyncio.sleep(body.delay)
    if body.marker in _fail_once:
        _fail_once.discard(body.marker)
        raise RuntimeError("transient failure")  # 500: rolled back, key released
    return ThingOut(id=thing_id, marker=body.marker, amount=body.amount)


@router.post("/stream")
async def stream_lines(key: IdempotencyKeyRequired) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for i in range(10):
            await asyncio.sleep(0.02)
            yield f"line {i}\n".encode()

    return StreamingResponse(lines(), media_type="text/plain")


@pytest.fixture(scope="module")
def app(service_env: Callable[..., dict[str, str]]) -> FastAPI:
    settings = OrdersSettings.model_validate(service_env("orders"))
    return create_service_app(
        ServiceSpec(name="idem", title="idempotency test", tables=platform, routers=[router]),
        settings,
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as c:
        await c.get("/healthz")
        async with app.state.engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE IF NOT EXISTS test_thing (id text, marker text, owner text)")
            )
        yield c


async def count(app: FastAPI, marker: str) -> int:
    async with app.state.engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT count(*) FROM test_thing WHERE marker = :m"), {"m": marker}
        )
        return int(value or 0)


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


class TestReplay:
    async def test_replay_returns_the_first_response_byte_for_byte(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        headers = {**auth("customer"), **key()}
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 100, "delay": 0}
        first = await client.post("/things", json=body, headers=headers)
        second = await client.post("/things", json=body, headers=headers)
        assert first.status_code == second.status_code == 201
        assert second.content == first.content
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert await count(app, body["marker"]) == 1

    async def test_same_key_other_body_is_422(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        headers = {**auth("customer"), **key()}
        marker = uuid.uuid4().hex
        first = await client.post(
            "/things", json={"marker": marker, "amount": 1, "delay": 0}, headers=headers
        )
        other = await client.post(
            "/things", json={"marker": marker, "amount": 2, "delay": 0}, headers=headers
        )
        assert first.status_code == 201
        assert other.status_code == 422
        assert other.headers["content-type"] == "application/problem+json"
        assert other.json()["code"] == "idempotency_key_reused"
        assert await count(app, marker) == 1

    async def test_replay_while_first_is_running_is_409(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        headers = {**auth("customer"), **key()}
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 5, "delay": 0.5}
        first = asyncio.create_task(client.post("/things", json=body, headers=headers))
        await asyncio.sleep(0.15)
        second = await client.post("/things", json=body, headers=headers)
        assert second.status_code == 409
        assert second.json()["code"] == "idempotency_request_in_flight"
        assert (await first).status_code == 201
        assert await count(app, body["marker"]) == 1

    async def test_twenty_concurrent_requests_with_one_key_have_one_effect(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        headers = {**auth("customer"), **key()}
        # The first request holds its key for 1.5 s so that all twenty overlap even on a
        # loaded machine (with 0.3 s, late starters got the stored answer, a 201 too).
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 7, "delay": 1.5}
        responses = await asyncio.gather(
            *(client.post("/things", json=body, headers=headers) for _ in range(20))
        )
        created = [r for r in responses if r.status_code == 201]
        in_flight = [r for r in responses if r.status_code == 409]
        assert len(created) == 1
        assert len(in_flight) == 19
        assert all(r.json()["code"] == "idempotency_request_in_flight" for r in in_flight)
        assert await count(app, body["marker"]) == 1
        # Once finished, every retry gets the one stored answer.
        retry = await client.post("/things", json=body, headers=headers)
        assert retry.content == created[0].content

    async def test_keys_are_scoped_to_the_caller(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        shared_key = key()
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 3, "delay": 0}
        alice = await client.post("/things", json=body, headers={**auth("customer"), **shared_key})
        bob = await client.post("/things", json=body, headers={**auth("customer"), **shared_key})
        assert alice.status_code == bob.status_code == 201
        assert alice.json()["id"] != bob.json()["id"]
        assert await count(app, body["marker"]) == 2

    async def test_server_error_releases_the_key_so_a_retry_runs(
        self, app: FastAPI, auth: TokenFactory
    ) -> None:
        marker = uuid.uuid4().hex
        _fail_once.add(marker)
        headers = {**auth("customer"), **key()}
        body: dict[str, Any] = {"marker": marker, "amount": 9, "delay": 0}
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as c,
        ):
            failed = await c.post("/things", json=body, headers=headers)
            assert failed.status_code == 500
            assert await count(app, marker) == 0  # rolled back
            retried = await c.post("/things", json=body, headers=headers)
            assert retried.status_code == 201
            assert "idempotent-replayed" not in retried.headers
            assert await count(app, marker) == 1


class TestKeyRules:
    async def test_missing_key_is_refused_where_required(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        marker = uuid.uuid4().hex
        response = await client.post(
            "/things", json={"marker": marker, "amount": 1, "delay": 0}, headers=auth("customer")
        )
        assert response.status_code == 400
        assert response.json()["code"] == "idempotency_key_required"
        assert await count(app, marker) == 0

    async def test_overlong_key_is_400(self, client: httpx.AsyncClient, auth: TokenFactory) -> None:
        response = await client.post(
            "/things",
            json={"marker": "x", "amount": 1, "delay": 0},
            headers={**auth("customer"), "Idempotency-Key": "k" * 256},
        )
        assert response.status_code == 400
        assert response.json()["code"] == "idempotency_key_invalid"

    async def test_unauthenticated_attempt_does_not_burn_the_key(
        self, client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
    ) -> None:
        k = key()
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 1, "delay": 0}
        anonymous = await client.post("/things", json=body, headers=k)
        assert anonymous.status_code == 401
        assert (await client.post("/things", json=body, headers=k)).status_code == 401
        ok = await client.post("/things", json=body, headers={**auth("customer"), **k})
        assert ok.status_code == 201
        assert await count(app, body["marker"]) == 1

    async def test_openapi_declares_the_header(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        params = spec["paths"]["/things"]["post"]["parameters"]
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params)


async def test_expired_keys_are_purged_and_live_ones_kept(
    client: httpx.AsyncClient, app: FastAPI, auth: TokenFactory
) -> None:
    from shared.app import purge_idempotency_keys

    table = platform.idempotency_key
    expired, live = key(), key()
    for headers in (expired, live):
        body = {"marker": uuid.uuid4().hex, "amount": 1, "delay": 0}
        assert (
            await client.post("/things", json=body, headers={**auth(), **headers})
        ).status_code == 201
    async with app.state.engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.key == expired["Idempotency-Key"])
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
    app.state.last_key_purge = float("-inf")
    await purge_idempotency_keys(app)
    async with app.state.engine.connect() as conn:
        left = set(
            (
                await conn.execute(
                    select(table.c.key).where(
                        table.c.key.in_([expired["Idempotency-Key"], live["Idempotency-Key"]])
                    )
                )
            ).scalars()
        )
    assert left == {live["Idempotency-Key"]}


class TestOwnership:
    async def test_a_late_finisher_cannot_release_the_hold_that_took_over(
        self, app: FastAPI, auth: TokenFactory
    ) -> None:
        """A's lock goes stale (its process stalled), B takes the key over; A then fails.
        A's release must not free the key while B runs, or C would run a third time."""
        marker = uuid.uuid4().hex
        _fail_once.add(marker)
        headers = {**auth("customer"), **key()}
        body: dict[str, Any] = {"marker": marker, "amount": 4, "delay": 0.6}
        table = platform.idempotency_key
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as c,
        ):
            a = asyncio.create_task(c.post("/things", json=body, headers=headers))
            await asyncio.sleep(0.2)
            async with app.state.engine.begin() as conn:
                await conn.execute(
                    update(table)
                    .where(table.c.key == headers["Idempotency-Key"])
                    .values(locked_until=func.now() - timedelta(seconds=1))
                )
            b = asyncio.create_task(c.post("/things", json=body, headers=headers))
            assert (await a).status_code == 500
            c_response = await c.post("/things", json=body, headers=headers)
            assert c_response.status_code == 409
            assert c_response.json()["code"] == "idempotency_request_in_flight"
            b_response = await b
            assert b_response.status_code == 201
            replay = await c.post("/things", json=body, headers=headers)
            assert replay.content == b_response.content
            assert await count(app, marker) == 1

    async def test_a_slow_request_keeps_its_lock(
        self, app: FastAPI, auth: TokenFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import shared.idempotency

        monkeypatch.setattr(shared.idempotency, "LOCK_TIMEOUT", timedelta(seconds=0.3))
        headers = {**auth("customer"), **key()}
        body: dict[str, Any] = {"marker": uuid.uuid4().hex, "amount": 6, "delay": 1.2}
        async with running(app) as c:
            first = asyncio.create_task(c.post("/things", json=body, headers=headers))
            await asyncio.sleep(0.8)  # well past the lock timeout: only renewal keeps it
            second = await c.post("/things", json=body, headers=headers)
            assert second.status_code == 409
            assert (await first).status_code == 201
            assert await count(app, body["marker"]) == 1


async def test_a_response_the_client_did_not_receive_whole_is_not_replayed(
    app: FastAPI, auth: TokenFactory
) -> None:
    idem = key()["Idempotency-Key"]
    token = auth("customer")["Authorization"]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", token.encode()),
            (b"idempotency-key", idem.encode()),
            (b"content-length", b"0"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    got_chunk = asyncio.Event()
    received: list[bytes] = []
    requested = False

    async def receive() -> dict[str, object]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await got_chunk.wait()
        return {"type": "http.disconnect"}  # the client goes away after the first lines

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])  # type: ignore[arg-type]
            got_chunk.set()

    async with running(app) as c:
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert 0 < len(received) < 10
        retry = await c.post("/stream", headers={"Authorization": token, "Idempotency-Key": idem})
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert retry.text == "".join(f"line {i}\n" for i in range(10))
