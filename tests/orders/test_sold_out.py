"""A sold-out campaign on real PostgreSQL: the per-process memo of sold-out campaigns refuses
from memory, yet units that come back sell at once and an interrupted order still resumes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, select, update

from services.orders.models import customer_order, platform
from services.orders.presales.service import SoldOutMemo
from tests.conftest import TokenFactory
from tests.orders.presale_support import open_campaign, order, run_jobs, terms_body
from tests.shared.payments.support import PaymentsApp


async def test_the_memo_forgets_after_its_time_and_stays_small() -> None:
    memo = SoldOutMemo(ttl=0.05, size=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    memo.remember(first, 0)
    assert memo.left(first) == 0
    await asyncio.sleep(0.06)
    assert memo.left(first) is None
    memo.remember(first, 1)
    memo.remember(second, 2)
    memo.remember(third, 3)  # full: what it held is dropped, not grown
    assert (memo.left(first), memo.left(second), memo.left(third)) == (None, None, 3)
    memo.forget(third)
    assert memo.left(third) is None


async def test_raised_capacity_sells_at_once_after_a_sold_out_refusal(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    assert (await order(sim_orders, auth("customer"), campaign_id)).status_code == 201
    late = auth("customer")
    refused = await order(sim_orders, late, campaign_id)
    assert refused.status_code == 409
    assert refused.json()["code"] == "presale_sold_out"
    current = (await sim_orders.client.get(f"/v1/presales/{campaign_id}", headers=staff)).json()
    raised = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}",
        json=terms_body(
            capacity=2,
            min_quantity=1,
            opens_at=current["opens_at"],
            closes_at=current["closes_at"],
        ),
        headers=staff,
    )
    assert raised.status_code == 200, raised.text
    assert (await order(sim_orders, late, campaign_id)).status_code == 201


async def test_an_expired_order_gives_its_unit_to_the_next_buyer_at_once(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    unpaid = await order(sim_orders, auth("customer"), campaign_id, payment_method=None)
    assert unpaid.status_code == 201, unpaid.text
    assert unpaid.json()["status"] == "pending_payment"
    late = auth("customer")
    assert (await order(sim_orders, late, campaign_id)).status_code == 409
    async with sim_orders.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(customer_order)
            .where(customer_order.c.id == uuid.UUID(unpaid.json()["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await run_jobs(sim_orders)
    assert (await order(sim_orders, late, campaign_id)).status_code == 201


async def test_an_interrupted_order_resumes_on_a_sold_out_campaign(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """The memo answers only new keys: a retry that takes over the key of a request whose
    process died must find that request's order, not be told the campaign is sold out."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    buyer, key = auth("customer"), uuid.uuid4().hex
    placed = await order(sim_orders, buyer, campaign_id, key=key)
    assert placed.status_code == 201, placed.text
    refused = await order(sim_orders, auth("customer"), campaign_id)
    assert refused.json()["code"] == "presale_sold_out"
    # What a process that died after placing the order, before storing its answer, leaves.
    keys = platform.idempotency_key
    async with sim_orders.app.state.sessionmaker() as session, session.begin():
        stale = await session.execute(
            update(keys)
            .where(keys.c.key == key)
            .values(
                status="started",
                response_status=None,
                response_body=None,
                response_headers=None,
                locked_until=datetime.now(UTC) - timedelta(seconds=1),
            )
            .returning(keys.c.key)
        )
        assert stale.first() is not None
    resumed = await order(sim_orders, buyer, campaign_id, key=key)
    assert resumed.status_code == 201, resumed.text
    assert resumed.json()["id"] == placed.json()["id"]


async def _key_rows(app: PaymentsApp, key: str) -> int:
    keys = platform.idempotency_key
    async with app.app.state.sessionmaker() as session:
        n = await session.scalar(select(func.count()).where(keys.c.key == key))
        return int(n or 0)


async def test_a_refusal_from_memory_claims_no_key_and_answers_as_the_endpoint_does(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """Refusals from the memo are given before the Idempotency-Key is claimed (one statement
    that finds the key unused, instead of a claim and its release): the same answer as the
    endpoint's own, and no key row left behind."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    assert (await order(sim_orders, auth("customer"), campaign_id)).status_code == 201
    from_endpoint = await order(sim_orders, auth("customer"), campaign_id, quantity=2)
    key = uuid.uuid4().hex
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = sim_orders.app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        from_memory = await order(sim_orders, auth("customer"), campaign_id, quantity=2, key=key)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements  # is the key unused? (no claim, no release)
    assert statements[0].startswith("SELECT idempotency_key.key")
    for refused in (from_endpoint, from_memory):
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    first, second = from_endpoint.json(), from_memory.json()
    assert second["request_id"] == from_memory.headers["x-request-id"]
    first.pop("request_id")
    second.pop("request_id")
    assert second == first
    assert second["code"] == "presale_sold_out"
    assert second["available"] == 0
    assert await _key_rows(sim_orders, key) == 0
    # Counted under the endpoint's route, not as an unmatched path.
    metrics = (await sim_orders.client.get("/metrics")).text
    assert 'route="/v1/presales/{campaign_id}/orders",service="orders",status="409"' in metrics


async def test_a_used_key_replays_its_order_on_a_sold_out_campaign(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """A retry of a placed order after the campaign sold out gets its 201 again, not a
    refusal from memory; a key used with another body is still refused as reused."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    buyer, key = auth("customer"), uuid.uuid4().hex
    placed = await order(sim_orders, buyer, campaign_id, key=key)
    assert placed.status_code == 201, placed.text
    refused = await order(sim_orders, auth("customer"), campaign_id)
    assert refused.json()["code"] == "presale_sold_out"
    again = await order(sim_orders, buyer, campaign_id, key=key)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == placed.json()
    other_body = await order(sim_orders, buyer, campaign_id, key=key, quantity=2)
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"


async def test_what_the_endpoint_refuses_otherwise_is_not_refused_from_memory(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """On a campaign known sold out, a caller who may not order, a body the endpoint refuses
    and an order that fits what was left get the endpoint's own answers."""
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=1, min_quantity=1)
    assert (await order(sim_orders, auth("customer"), campaign_id)).status_code == 201
    assert (await order(sim_orders, auth("customer"), campaign_id)).status_code == 409
    as_staff = await order(sim_orders, staff, campaign_id)
    assert as_staff.status_code == 403, as_staff.text
    bad_body = await order(sim_orders, auth("customer"), campaign_id, quantity=0)
    assert bad_body.status_code == 422, bad_body.text
    assert bad_body.json()["code"] == "validation_error"
    unknown_sku = await order(sim_orders, auth("customer"), campaign_id, sku="NOPE")
    assert unknown_sku.json()["code"] == "presale_sold_out"  # sold out first, as before
