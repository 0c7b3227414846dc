"""Reconciliation: payments whose state in our database differs from the provider's."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from sqlalchemy import delete, update

from qunbuy.payments_cli import add_payments_commands
from shared.payments import Discrepancy, SimulatedProvider, reconcile
from tests.conftest import TokenFactory
from tests.shared.payments.support import (
    PaymentsApp,
    new_merchant,
    new_reference,
    payments_app,
    payments_env,
)


async def pay(app: PaymentsApp, headers: dict[str, str], token: str = "pm_card_visa") -> Any:
    response = await app.post(
        "/v1/payments",
        {
            "reference": new_reference(),
            "merchant_id": new_merchant(),
            "amount": 1000,
            "currency": "CNY",
            "payment_method": token,
        },
        headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def run(app: PaymentsApp, since: datetime, *, repair: bool) -> list[Discrepancy]:
    async with app.app.state.sessionmaker() as session, session.begin():
        return await reconcile(
            session,
            app.ctx,
            since=since,
            until=datetime.now(UTC) + timedelta(seconds=1),
            repair=repair,
        )


async def forget_undelivered_events(app: PaymentsApp) -> None:
    """As if the provider's webhooks never reached us."""
    events = app.ctx.tables.simulated_event
    async with app.app.state.sessionmaker() as session, session.begin():
        await session.execute(delete(events).where(events.c.delivered_at.is_(None)))


def only(found: list[Discrepancy], provider_id: str) -> Discrepancy:
    mine = [d for d in found if d.provider_payment_id == provider_id]
    assert len(mine) == 1, found
    return mine[0]


async def test_a_refund_we_never_heard_of_is_found_and_repaired(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    customer = auth("customer")
    payment = await pay(sim_orders, customer)
    intent = payment["provider_payment_id"]
    await sim_orders.tick()
    # A refund made at the provider whose events are lost.
    await sim_orders.ctx.provider.create_refund(
        intent, amount=300, reason=None, metadata={}, idempotency_key=uuid.uuid4().hex
    )
    await forget_undelivered_events(sim_orders)

    found = only(await run(sim_orders, since, repair=False), intent)
    assert found.kind == "mismatch"
    assert found.fields == ("amount_refunded",)
    assert (found.ours["amount_refunded"], found.theirs["amount_refunded"]) == (0, 300)
    assert not found.repaired
    current = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=customer)
    ).json()
    assert current["amount_refunded"] == 0  # listing repairs nothing

    assert only(await run(sim_orders, since, repair=True), intent).repaired
    current = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=customer)
    ).json()
    assert (current["amount_refunded"], current["net_paid"]) == (300, 700)
    assert current["refunds"][0]["requested_by"] == "provider"
    assert (await sim_orders.event_types(payment["id"])) == [
        "payment.succeeded",
        "payment.refunded",
    ]
    assert [
        d for d in await run(sim_orders, since, repair=False) if d.provider_payment_id == intent
    ] == []


async def test_a_missed_status_change_is_repaired(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    customer = auth("customer")
    payment = await pay(sim_orders, customer, "pm_card_succeedLater")
    assert payment["status"] == "processing"
    provider = sim_orders.ctx.provider
    assert isinstance(provider, SimulatedProvider)
    await provider.settle_due()  # it succeeded at the provider...
    await forget_undelivered_events(sim_orders)  # ...and we were never told

    found = only(await run(sim_orders, since, repair=True), payment["provider_payment_id"])
    assert set(found.fields) == {"status", "amount_captured"}
    assert found.ours["status"] == "processing"
    assert found.theirs["status"] == "succeeded"
    current = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=customer)
    ).json()
    assert (current["status"], current["net_paid"]) == ("succeeded", 1000)
    assert current["status_history"][-1]["source"] == "reconcile"
    assert (await sim_orders.event_types(payment["id"])) == ["payment.succeeded"]


async def test_a_payment_the_provider_has_but_we_lost_is_recorded(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """The process died after the provider charged, before our commit, and the client never
    retried: the provider's events name a payment we have no row for."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    payment = await pay(sim_orders, auth("customer"))
    ids = sim_orders.ctx.tables.payment
    status_changes = sim_orders.ctx.tables.payment_status_change
    async with sim_orders.app.state.sessionmaker() as session, session.begin():
        pid = uuid.UUID(payment["id"])
        await session.execute(delete(status_changes).where(status_changes.c.payment_id == pid))
        await session.execute(delete(ids).where(ids.c.id == pid))
    await sim_orders.tick()  # its events arrive now, about an unknown object

    found = only(await run(sim_orders, since, repair=True), payment["provider_payment_id"])
    assert (found.kind, found.payment_id, found.repaired) == (
        "missing_locally",
        uuid.UUID(payment["id"]),
        True,
    )
    restored = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=auth("admin"))
    ).json()
    assert (restored["status"], restored["amount_captured"]) == ("succeeded", 1000)
    assert (restored["reference"], restored["merchant_id"]) == (
        payment["reference"],
        payment["merchant_id"],
    )


async def test_with_stripe_a_dashboard_refund_is_found(
    stripe_orders: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    payment = await pay(stripe_orders, auth("customer"))
    intent = payment["provider_payment_id"]
    await localstripe_sdk.v1.refunds.create_async({"payment_intent": intent, "amount": 450})
    found = only(await run(stripe_orders, since, repair=True), intent)
    assert (found.ours["amount_refunded"], found.theirs["amount_refunded"]) == (0, 450)
    assert [
        d for d in await run(stripe_orders, since, repair=False) if d.provider_payment_id == intent
    ] == []


def test_the_command_line(
    service_env: Callable[..., dict[str, str]],
    db_urls: dict[str, str],
    auth: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    env = payments_env("simulated")

    async def arrange() -> str:
        async with payments_app("orders", service_env("orders", **env)) as app:
            payment = await pay(app, auth("customer"))
            await app.ctx.provider.create_refund(
                payment["provider_payment_id"],
                amount=100,
                reason=None,
                metadata={},
                idempotency_key=uuid.uuid4().hex,
            )
            await forget_undelivered_events(app)
            return str(payment["provider_payment_id"])

    intent = asyncio.run(arrange())
    for service, url in db_urls.items():
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", url)
    for name, value in {**env, "EVENT_SECRET": "cli-secret", "QUNBUY_MODE": "production"}.items():
        monkeypatch.setenv(name, value)

    parser = argparse.ArgumentParser(prog="qunbuy")
    add_payments_commands(parser.add_subparsers(dest="command", required=True))

    def main(*extra: str) -> int:
        args = parser.parse_args(
            ["payments", "reconcile", "--service", "orders", "--since", since.isoformat(), *extra]
        )
        return int(args.handler(args))

    assert main() == 3
    listed = capsys.readouterr().out
    assert f"mismatch\t{intent}\t" in listed
    assert "not repaired" in listed
    assert main("--repair") == 0
    repaired = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"mismatch\t{intent}\t") for line in repaired)
    assert all(line.endswith("\trepaired") for line in repaired if "\t" in line)
    assert main() == 0
    assert ": 0 discrepancies" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        parser.parse_args(["payments", "reconcile", "--service", "orders", "--since", "yesterday"])


async def test_a_webhook_landing_during_a_repair_is_not_undone(
    sim_orders: PaymentsApp, auth: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile reads the provider while a webhook moves the payment forward. The repair
    must not write its older snapshot over the newer state (it holds the row lock first)."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    payment = await pay(sim_orders, auth("customer"), token="pm_card_succeedLater")
    assert payment["status"] == "processing"
    # We missed the webhook that said "processing": our row is behind the provider's.
    table = sim_orders.ctx.tables.payment
    async with sim_orders.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(table)
            .where(table.c.id == uuid.UUID(payment["id"]))
            .values(status="requires_payment_method")
        )
    provider = sim_orders.ctx.provider
    real_retrieve = provider.retrieve_payment
    fetched, release = asyncio.Event(), asyncio.Event()

    async def late_retrieve(payment_id: str) -> Any:
        snapshot = await real_retrieve(payment_id)
        if payment_id == payment["provider_payment_id"] and not fetched.is_set():
            # Only reconcile's read of this payment is held back.
            fetched.set()
            await release.wait()
        return snapshot

    monkeypatch.setattr(provider, "retrieve_payment", late_retrieve)
    repair = asyncio.create_task(run(sim_orders, since, repair=True))
    await asyncio.wait_for(fetched.wait(), 5)
    # Meanwhile the provider settles the payment and its webhook arrives.
    webhook = asyncio.create_task(sim_orders.tick())
    # Without the row lock the webhook finishes at once; with it, it waits for the repair.
    await asyncio.wait({webhook}, timeout=3)
    release.set()
    await asyncio.wait_for(repair, 10)
    await asyncio.wait_for(webhook, 10)
    view = (
        await sim_orders.client.get(f"/v1/payments/{payment['id']}", headers=auth("admin"))
    ).json()
    assert view["status"] == "succeeded"
    statuses = [h["to_status"] for h in view["status_history"]]
    assert statuses.index("succeeded") == len(statuses) - 1, statuses  # never moved back
