"""The database drops every connection (a restart, a failover): the request that meets a dead
connection is answered 503 database_unavailable (never 500), and the next one works. A burst
that finds no free connection in time is a 503 database_busy, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from shared.db import make_engine
from tests.conftest import TokenFactory
from tests.crowdfund.project_support import live_project, place_pledge
from tests.orders.presale_support import open_campaign, order
from tests.shared.payments.support import PaymentsApp, payments_app, payments_env


async def _drop_every_connection(app: PaymentsApp) -> int:
    url = app.app.state.settings.database_url
    killer = make_engine(url, pool_size=1)
    try:
        async with killer.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await killer.dispose()
    return int(killed or 0)


async def test_a_dropped_connection_is_a_503_and_the_retry_succeeds(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth)
    assert (await sim_orders.client.get(f"/v1/presales/{campaign_id}/public")).status_code == 200
    assert await _drop_every_connection(sim_orders) > 0

    first = await sim_orders.client.get(f"/v1/presales/{campaign_id}/public")
    assert first.status_code == 503, first.text
    assert first.json()["code"] == "database_unavailable"
    assert first.headers["retry-after"] == "1"
    again = await sim_orders.client.get(f"/v1/presales/{campaign_id}/public")
    assert again.status_code == 200


async def test_a_keyed_post_on_a_dropped_connection_is_a_503_and_its_retry_orders_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    await order(sim_orders, auth("customer"), campaign_id)  # the pool holds live connections
    assert await _drop_every_connection(sim_orders) > 0
    buyer = auth("customer")
    first = await order(sim_orders, buyer, campaign_id, key="restart-1")
    assert first.status_code == 503, first.text
    assert first.json()["code"] == "database_unavailable"
    retried = await order(sim_orders, buyer, campaign_id, key="restart-1")
    assert retried.status_code == 201, retried.text
    campaign = await sim_orders.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    assert campaign.json()["reserved_quantity"] == 2


async def test_no_free_connection_in_time_is_a_503_database_busy(
    service_env: Callable[..., dict[str, str]], auth: TokenFactory
) -> None:
    env = service_env(
        "orders", **payments_env("simulated", DB_POOL_SIZE="1", DB_POOL_TIMEOUT_SECONDS="0.5")
    )
    async with payments_app("orders", env) as app:
        campaign_id, _ = await open_campaign(app, auth)
        engine = app.app.state.engine
        # The pool's one connection (no overflow) is taken by someone else.
        async with engine.connect():
            busy = await app.client.get(f"/v1/presales/{campaign_id}/public")
            assert busy.status_code == 503, busy.text
            assert busy.json()["code"] == "database_busy"
            assert busy.headers["retry-after"] == "1"
            keyed = await order(app, auth("customer"), campaign_id)
            assert (keyed.status_code, keyed.json()["code"]) == (503, "database_busy")
        assert (await app.client.get(f"/v1/presales/{campaign_id}/public")).status_code == 200


async def test_a_pool_of_one_connection_serves_an_order_and_its_reads(
    service_env: Callable[..., dict[str, str]], auth: TokenFactory
) -> None:
    """Pools do not overflow (shared/db.py): a request that took a second connection while it
    held one would wait on itself. With one connection, ordering, reading the order with its
    payment, and pledging and reading the pledge each answer."""
    env = service_env(
        "orders", **payments_env("simulated", DB_POOL_SIZE="1", DB_POOL_TIMEOUT_SECONDS="0.5")
    )
    async with payments_app("orders", env) as app:
        campaign_id, _ = await open_campaign(app, auth)
        buyer = auth("customer")
        ways: list[dict[str, Any]] = [{"method": "wechat_pay", "payment_method": None}, {}]
        for pay in ways:
            placed = await order(app, buyer, campaign_id, **pay)
            assert placed.status_code == 201, placed.text
            seen = await app.client.get(f"/v1/orders/{placed.json()['id']}", headers=buyer)
            assert seen.status_code == 200, seen.text
            assert seen.json()["payment"]["id"] == placed.json()["payment"]["id"]
    env = service_env(
        "crowdfund",
        **payments_env("simulated", DB_POOL_SIZE="1", DB_POOL_TIMEOUT_SECONDS="0.5"),
    )
    async with payments_app("crowdfund", env) as app:
        project_id, _, (reward_id,) = await live_project(app, auth)
        backer = auth("customer")
        pledged = await place_pledge(app, backer, project_id, reward_id)
        assert pledged.status_code == 201, pledged.text
        seen = await app.client.get(f"/v1/pledges/{pledged.json()['id']}", headers=backer)
        assert seen.status_code == 200, seen.text
