"""The simulated provider on its own: idempotency, persistence, signed events."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from sqlalchemy import event, func, select

from qunbuy.pg import database_url, drop_databases, ensure_databases
from services.orders.models import payments
from shared.db import make_engine, sessionmaker_for
from shared.migrations import upgrade
from shared.payments import (
    WEBHOOK_EVENTS,
    PaymentRequest,
    ProviderNotFound,
    ProviderRejected,
    SimulatedProvider,
    WebhookSignatureInvalid,
    verify_signature,
)
from tests.shared.payments.support import SIMULATED_WEBHOOK_SECRET


@pytest.fixture(scope="module")
def own_db(pg_server_url: str) -> Iterator[str]:
    """A database of its own: these tests deliver (and refuse) every due event in it."""
    name = f"qbt_sim_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_databases(pg_server_url, [name], fresh=True))
    url = database_url(pg_server_url, name)
    try:
        upgrade("orders", url)
        yield url
    finally:
        asyncio.run(drop_databases(pg_server_url, [name]))


@pytest.fixture
async def provider(own_db: str) -> AsyncIterator[SimulatedProvider]:
    engine = make_engine(own_db, pool_size=2)
    try:
        yield SimulatedProvider(
            sessionmaker=sessionmaker_for(engine),
            tables=payments,
            webhook_secret=SIMULATED_WEBHOOK_SECRET,
            settle_seconds=0,
        )
    finally:
        await engine.dispose()


def request(
    token: str | None = "pm_card_visa", *, amount: int = 1000, marker: str | None = None
) -> PaymentRequest:
    return PaymentRequest(
        amount=amount,
        currency="CNY",
        method="card",
        capture_method="automatic",
        metadata={"marker": marker or uuid.uuid4().hex},
        payment_method=token,
    )


def key() -> str:
    return uuid.uuid4().hex


async def test_same_key_same_request_returns_the_first_result(
    provider: SimulatedProvider,
) -> None:
    req, create_key, confirm_key = request(), key(), key()
    created = await provider.create_payment(req, idempotency_key=create_key)
    again = await provider.create_payment(req, idempotency_key=create_key)
    assert again.id == created.id
    paid = await provider.confirm_payment(
        created.id, payment_method=None, idempotency_key=confirm_key
    )
    replayed = await provider.confirm_payment(
        created.id, payment_method=None, idempotency_key=confirm_key
    )
    assert paid == replayed
    assert paid.status == "succeeded"
    # A new key for the same confirmation is a new request, which Stripe refuses too.
    with pytest.raises(ProviderRejected) as refused:
        await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())
    assert refused.value.code == "payment_intent_unexpected_state"


async def test_a_payment_without_a_method_is_created_once_per_key_in_one_statement(
    own_db: str,
) -> None:
    """A WeChat Pay or Alipay payment (no method to check first) is the intent and its key
    written by one statement that commits on its own; ten concurrent requests with one key
    make one intent, all answered with it, and the key with another request is refused."""
    engine = make_engine(own_db, pool_size=5)
    provider = SimulatedProvider(
        sessionmaker=sessionmaker_for(engine), tables=payments, webhook_secret="whsec_x"
    )
    seen: list[tuple[str, object]] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(
            (statement.split(maxsplit=1)[0], conn.get_execution_options().get("isolation_level"))
        )

    try:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        alone = await provider.create_payment(request(None), idempotency_key=key())
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert seen == [("WITH", "AUTOCOMMIT")]
        assert alone.status == "requires_payment_method"
        assert (await provider.retrieve_payment(alone.id)).amount == 1000
        # Ten at once with one new key: they meet while the first is being written.
        marker, shared_key = uuid.uuid4().hex, key()
        req = request(None, marker=marker)
        created = await asyncio.gather(
            *(provider.create_payment(req, idempotency_key=shared_key) for _ in range(10))
        )
        assert len({p.id for p in created}) == 1
        async with engine.connect() as conn:
            objects = await conn.scalar(
                select(func.count())
                .select_from(payments.simulated_object)
                .where(payments.simulated_object.c.data["metadata"]["marker"].as_string() == marker)
            )
        assert objects == 1
        with pytest.raises(ProviderRejected) as refused:
            await provider.create_payment(request(None, amount=2000), idempotency_key=shared_key)
        assert refused.value.code == "idempotency_key_in_use"
    finally:
        await engine.dispose()


async def test_same_key_different_request_is_refused(provider: SimulatedProvider) -> None:
    shared_key = key()
    await provider.create_payment(request(amount=1000), idempotency_key=shared_key)
    with pytest.raises(ProviderRejected) as refused:
        await provider.create_payment(request(amount=2000), idempotency_key=shared_key)
    assert refused.value.code == "idempotency_key_in_use"


async def test_state_outlives_the_provider_object(provider: SimulatedProvider, own_db: str) -> None:
    created = await provider.create_payment(request(), idempotency_key=key())
    await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())
    engine = make_engine(own_db, pool_size=1)
    try:
        other = SimulatedProvider(
            sessionmaker=sessionmaker_for(engine), tables=payments, webhook_secret="x"
        )
        seen = await other.retrieve_payment(created.id)
    finally:
        await engine.dispose()
    assert (seen.status, seen.amount_captured, seen.refunds) == ("succeeded", 1000, ())


async def test_refunds_are_bounded_by_what_was_captured(provider: SimulatedProvider) -> None:
    created = await provider.create_payment(request(), idempotency_key=key())
    await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())
    first = await provider.create_refund(
        created.id, amount=600, reason=None, metadata={}, idempotency_key=key()
    )
    assert (first.amount, first.status, first.payment_id) == (600, "succeeded", created.id)
    with pytest.raises(ProviderRejected) as refused:
        await provider.create_refund(
            created.id, amount=401, reason=None, metadata={}, idempotency_key=key()
        )
    assert refused.value.code == "amount_too_large"
    state = await provider.retrieve_payment(created.id)
    assert (state.amount_captured, state.amount_refunded) == (1000, 600)


async def test_unknown_objects_and_methods(provider: SimulatedProvider) -> None:
    with pytest.raises(ProviderNotFound):
        await provider.retrieve_payment("pi_sim_nothing")
    with pytest.raises(ProviderRejected) as refused:
        await provider.create_payment(request("pm_card_nonsense"), idempotency_key=key())
    assert refused.value.code == "resource_missing"


async def test_later_outcomes_settle_when_due(provider: SimulatedProvider) -> None:
    created = await provider.create_payment(request("pm_card_succeedLater"), idempotency_key=key())
    pending = await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())
    assert pending.status == "processing"
    await provider.settle_due()
    assert (await provider.retrieve_payment(created.id)).status == "succeeded"


async def test_events_are_signed_with_the_stripe_scheme_and_retried_on_failure(
    provider: SimulatedProvider,
) -> None:
    async def drain(body: bytes, signature: str) -> int:
        return 204

    while await provider.deliver_events(drain):  # the other tests' events
        pass
    marker = uuid.uuid4().hex
    created = await provider.create_payment(request(marker=marker), idempotency_key=key())
    await provider.confirm_payment(created.id, payment_method=None, idempotency_key=key())

    received: list[tuple[bytes, str]] = []

    async def refuse(body: bytes, signature: str) -> int:
        return 500

    async def accept(body: bytes, signature: str) -> int:
        received.append((body, signature))
        return 200

    # payment_intent.succeeded; payment_intent.created and charge.succeeded are not among
    # the events a webhook endpoint subscribes to (WEBHOOK_EVENTS): never sent.
    assert await provider.deliver_events(refuse) == 1
    assert await provider.deliver_events(accept) == 0  # the refused one waits for its retry
    second = await provider.create_payment(request(marker=marker), idempotency_key=key())
    assert await provider.deliver_events(accept) == 0
    await provider.cancel_payment(second.id, idempotency_key=key())
    assert await provider.deliver_events(accept) == 1
    [(body, signature)] = received
    event = json.loads(body)
    assert (event["type"], event["data"]["object"]["id"]) == ("payment_intent.canceled", second.id)
    assert created.id != second.id
    verify_signature(body, signature, SIMULATED_WEBHOOK_SECRET)
    assert stripe.WebhookSignature.verify_header(body.decode(), signature, SIMULATED_WEBHOOK_SECRET)
    with pytest.raises(WebhookSignatureInvalid):
        verify_signature(body, signature, "whsec_other")
    with pytest.raises(WebhookSignatureInvalid):
        verify_signature(body, signature, "")


def test_the_documented_webhook_subscription_is_webhook_events() -> None:
    """docs/payments.md tells operators which events to subscribe a Stripe endpoint to: the
    list the simulated provider delivers (WEBHOOK_EVENTS; what it delivers is checked above
    and in tests/orders/test_payments_simulated.py)."""
    docs = (Path(__file__).resolve().parents[3] / "docs" / "payments.md").read_text()
    section = docs.split("3. Events to subscribe to", 1)[1].split("\n4. ", 1)[0]
    assert set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", section)) == WEBHOOK_EVENTS
