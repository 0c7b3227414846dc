"""Keyset pagination and merchant scoping on real PostgreSQL, through a real endpoint."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, MetaData, String, Table, Uuid, insert, select

from shared.auth import CurrentUser
from shared.db import SessionDep
from shared.errors import PROBLEM_JSON
from shared.pagination import Page, PageDep, fetch_page, scope_to_merchant
from tests.conftest import TokenFactory, running, settings_for

ServiceEnv = Callable[..., dict[str, str]]


class ItemOut(BaseModel):
    id: uuid.UUID
    merchant_id: str
    created_at: datetime


@pytest.fixture
async def listing(service_env: ServiceEnv) -> AsyncIterator[tuple[httpx.AsyncClient, Table, str]]:
    """A throw-away table of items and a list endpoint over it, on the referrals app."""
    from services.referrals.app import create_app

    name = f"test_item_{uuid.uuid4().hex[:8]}"
    table = Table(
        name,
        MetaData(),
        Column("id", Uuid, primary_key=True),
        Column("merchant_id", String(100), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    router = APIRouter()

    @router.get("/test/items", response_model=Page[ItemOut])
    async def items(principal: CurrentUser, page: PageDep, session: SessionDep) -> Page[ItemOut]:
        stmt = scope_to_merchant(select(table), principal, table.c.merchant_id)
        rows, cursor = await fetch_page(
            session, stmt, sort=table.c.created_at, key=table.c.id, params=page
        )
        return Page[ItemOut](
            items=[ItemOut.model_validate(r._mapping) for r in rows], next_cursor=cursor
        )

    app = create_app(settings_for("referrals", service_env("referrals")))
    app.include_router(router)
    async with running(app) as client:
        async with app.state.engine.begin() as conn:
            await conn.run_sync(table.create)
        try:
            yield client, table, name
        finally:
            async with app.state.engine.begin() as conn:
                await conn.run_sync(table.drop)


async def add(client: httpx.AsyncClient, table: Table, rows: list[dict[str, object]]) -> None:
    engine = client._transport.app.state.engine  # type: ignore[attr-defined]
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], limit: int, between: object = None
) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/test/items", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if between is not None:
            await between()  # type: ignore[operator]
        if cursor is None:
            return seen


async def test_every_row_once_in_order_even_with_equal_times_and_inserts_between_pages(
    listing: tuple[httpx.AsyncClient, Table, str], auth: TokenFactory
) -> None:
    client, table, _ = listing
    merchant = f"m_{uuid.uuid4().hex[:6]}"
    same_moment = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)  # before any row made now
    rows = [
        {"id": uuid.uuid4(), "merchant_id": merchant, "created_at": same_moment} for _ in range(250)
    ]
    await add(client, table, rows)
    expected = sorted((str(r["id"]) for r in rows), reverse=True)

    async def newer_rows_arrive() -> None:
        await add(
            client,
            table,
            [{"id": uuid.uuid4(), "merchant_id": merchant, "created_at": datetime.now(UTC)}],
        )

    seen = await walk(client, auth("staff", merchant_id=merchant), 37, newer_rows_arrive)
    assert seen == expected  # newer rows sort before the first page: never mixed in


async def test_staff_see_their_merchant_admins_see_all_customers_nothing(
    listing: tuple[httpx.AsyncClient, Table, str], auth: TokenFactory
) -> None:
    client, table, _ = listing
    mine, other = f"m_{uuid.uuid4().hex[:6]}", f"m_{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    await add(
        client,
        table,
        [
            {"id": uuid.uuid4(), "merchant_id": m, "created_at": now}
            for m in [mine] * 3 + [other] * 2
        ],
    )
    assert len(await walk(client, auth("staff", merchant_id=mine), 10)) == 3
    assert len(await walk(client, auth("admin"), 10)) == 5
    refused = await client.get("/test/items", headers=auth("customer"))
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_required"


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"[1]").decode(),
        base64.urlsafe_b64encode(b'["yesterday", "x"]').decode(),
        base64.urlsafe_b64encode(
            b'["2026-11-25T08:00:00", "' + str(uuid.uuid4()).encode() + b'"]'
        ).decode(),
        base64.urlsafe_b64encode(b'["2026-11-25T08:00:00+00:00", 12]').decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
    ids=["garbage", "short", "bad-date", "naive-date", "bad-id", "object", "not-utf8"],
)
async def test_a_malformed_cursor_is_a_400(
    listing: tuple[httpx.AsyncClient, Table, str], auth: TokenFactory, cursor: str
) -> None:
    client, _, _ = listing
    response = await client.get("/test/items", params={"cursor": cursor}, headers=auth("admin"))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize("limit", [0, -1, 101, "many"])
async def test_limits_are_bounded(
    listing: tuple[httpx.AsyncClient, Table, str], auth: TokenFactory, limit: object
) -> None:
    client, _, _ = listing
    response = await client.get("/test/items", params={"limit": str(limit)}, headers=auth("admin"))
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_concurrent_readers_page_independently(
    listing: tuple[httpx.AsyncClient, Table, str], auth: TokenFactory
) -> None:
    client, table, _ = listing
    merchant = f"m_{uuid.uuid4().hex[:6]}"
    await add(
        client,
        table,
        [
            {"id": uuid.uuid4(), "merchant_id": merchant, "created_at": datetime.now(UTC)}
            for _ in range(60)
        ],
    )
    headers = auth("staff", merchant_id=merchant)
    results = await asyncio.gather(*(walk(client, headers, n) for n in (7, 13, 60)))
    assert results[0] == results[1] == results[2]
    assert len(set(results[0])) == 60
