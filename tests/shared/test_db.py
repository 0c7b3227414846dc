"""One transaction per request: committed when the endpoint returns, rolled back on error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import make_url, text

from services.orders.config import OrdersSettings
from services.orders.models import platform
from shared.app import ServiceSpec, create_service_app
from shared.db import SessionDep, make_engine
from shared.errors import Conflict

router = APIRouter()


class Refused(Conflict):
    code = "refused_after_write"


async def _write(session: SessionDep, marker: str) -> None:
    await session.execute(text("INSERT INTO test_tx (marker) VALUES (:m)"), {"m": marker})
    await session.flush()


@router.post("/ok/{marker}")
async def ok(marker: str, session: SessionDep) -> dict[str, str]:
    await _write(session, marker)
    return {"marker": marker}


@router.post("/domain-error/{marker}")
async def domain_error(marker: str, session: SessionDep) -> dict[str, str]:
    await _write(session, marker)
    raise Refused("written, then refused")


@router.post("/crash/{marker}")
async def crash(marker: str, session: SessionDep) -> dict[str, str]:
    await _write(session, marker)
    raise RuntimeError("bug after the write")


@router.post("/rolled-back/{marker}/{sqlstate}")
async def rolled_back(marker: str, sqlstate: str, session: SessionDep) -> dict[str, str]:
    """PostgreSQL aborts the transaction after the write (a deadlock, a serialization
    failure): raised by the server itself with that SQLSTATE."""
    await _write(session, marker)
    await session.execute(
        text(f"DO $$ BEGIN RAISE EXCEPTION 'aborted' USING ERRCODE = '{sqlstate}'; END $$")
    )
    return {"marker": marker}


@router.post("/commit-fails/{marker}")
async def commit_fails(marker: str, session: SessionDep) -> dict[str, str]:
    """The deferred constraint fires only at COMMIT, after the endpoint has returned."""
    await session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
    await session.execute(
        text("INSERT INTO test_tx_deferred (marker) VALUES (:m), (:m)"), {"m": marker}
    )
    return {"marker": marker}


@pytest.fixture(scope="module")
def app(service_env: Callable[..., dict[str, str]]) -> FastAPI:
    settings = OrdersSettings.model_validate(service_env("orders"))
    spec = ServiceSpec(name="txtest", title="tx", tables=platform, routers=[router])
    return create_service_app(spec, settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app):
        async with app.state.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS test_tx (marker text)"))
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS test_tx_deferred (marker text, "
                    "CONSTRAINT uq_test_tx_deferred UNIQUE (marker) DEFERRABLE INITIALLY DEFERRED)"
                )
            )
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def rows(app: FastAPI, marker: str) -> int:
    async with app.state.engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT count(*) FROM test_tx WHERE marker = :m"), {"m": marker}
        )
    return int(value or 0)


async def test_committed_when_the_endpoint_returns(client: httpx.AsyncClient, app: FastAPI) -> None:
    marker = uuid.uuid4().hex
    assert (await client.post(f"/ok/{marker}")).status_code == 200
    assert await rows(app, marker) == 1


async def test_domain_error_rolls_back_the_write(client: httpx.AsyncClient, app: FastAPI) -> None:
    marker = uuid.uuid4().hex
    response = await client.post(f"/domain-error/{marker}")
    assert response.status_code == 409
    assert response.json()["code"] == "refused_after_write"
    assert await rows(app, marker) == 0


async def test_unexpected_error_rolls_back_and_is_500(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    marker = uuid.uuid4().hex
    response = await client.post(f"/crash/{marker}")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "bug after the write" not in response.text
    assert await rows(app, marker) == 0


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"], ids=["deadlock", "serialization"])
async def test_a_transaction_the_server_aborted_is_a_503_to_retry_and_wrote_nothing(
    client: httpx.AsyncClient, app: FastAPI, sqlstate: str
) -> None:
    marker = uuid.uuid4().hex
    response = await client.post(f"/rolled-back/{marker}/{sqlstate}")
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_conflict"
    assert response.headers["retry-after"] == "1"
    assert await rows(app, marker) == 0


async def test_a_failed_commit_is_not_reported_as_success(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/commit-fails/{uuid.uuid4().hex}")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"


async def test_a_database_with_no_connection_left_is_a_503_not_a_500(
    service_env: Callable[..., dict[str, str]], pg_server_url: str
) -> None:
    """A server out of connection slots (SQLSTATE 53300, here a role allowed none) and a
    server that refuses the socket are conditions a retry can cure: 503 with Retry-After."""
    role = f"qb_full_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_server_url, pool_size=1)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        env = service_env("orders")
        full = make_url(env["DATABASE_URL"]).set(username=role)
        refused = make_url(env["DATABASE_URL"]).set(port=1)
        for url, code in ((full, "database_busy"), (refused, "database_unavailable")):
            settings = OrdersSettings.model_validate(
                {**env, "DATABASE_URL": url.render_as_string(hide_password=False)}
            )
            spec = ServiceSpec(name="txtest", title="tx", tables=platform, routers=[router])
            app = create_service_app(spec, settings)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://t") as c,
            ):
                response = await c.post(f"/ok/{uuid.uuid4().hex}")
            assert response.status_code == 503, response.text
            assert response.json()["code"] == code
            assert response.headers["retry-after"] == "1"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await admin.dispose()
