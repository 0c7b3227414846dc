"""Helpers for the payment tests: localstripe, signed events, apps with payments on."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import stripe
from fastapi import FastAPI
from sqlalchemy import func, select

from shared.payments import PaymentContext, payment_context, run_simulated_provider
from shared.payments._stripe import StripeHTTPClient
from tests.helpers import free_port

STRIPE_TEST_KEY = "sk_test_qunbuy"
STRIPE_WEBHOOK_SECRET = "whsec_test_stripe"
SIMULATED_WEBHOOK_SECRET = "whsec_test_simulated"


@contextlib.contextmanager
def localstripe_server(log_dir: Path) -> Iterator[str]:
    """A localstripe process on a free port, for as long as the block runs.

    It is localstripe with Stripe Connect's transfer routes added (qunbuy.localstripe_connect):
    localstripe has no Connect and no local Stripe Connect exists, so that part is our own
    stand-in; every other route is localstripe's own."""
    port = free_port()
    log = (log_dir / f"localstripe-{port}.log").open("wb")
    # --from-scratch: start empty (localstripe otherwise loads its last state from /tmp).
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qunbuy.localstripe_connect",
            "--port",
            str(port),
            "--from-scratch",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"localstripe exited: {(log_dir / log.name).read_text()[-2000:]}"
                )
            request = urllib.request.Request(
                f"{url}/v1/balance", headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("localstripe did not answer within 20 seconds")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.asynccontextmanager
async def stripe_client(base_url: str) -> AsyncIterator[stripe.StripeClient]:
    """A plain SDK client on localstripe, for arranging things behind our back."""
    http = StripeHTTPClient()
    try:
        yield stripe.StripeClient(
            STRIPE_TEST_KEY,
            base_addresses={"api": base_url},
            http_client=http,
            max_network_retries=0,
            stripe_version="2025-03-31.basil",
        )
    finally:
        await http.aclose()


async def card_needing_3ds(client: stripe.StripeClient) -> str:
    """localstripe has no canonical token for a 3D Secure card; create one by number."""
    pm = await client.v1.payment_methods.create_async(
        {
            "type": "card",
            "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    return str(pm.id)


def event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    created: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "type": event_type,
        "data": {"object": dict(obj)},
    }


def signed(
    payload: Mapping[str, Any], secret: str, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers Stripe would send (the SDK's own signing helper)."""
    body = json.dumps(payload)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
    return body.encode(), {"Stripe-Signature": header, "content-type": "application/json"}


@dataclass
class PaymentsApp:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def ctx(self) -> PaymentContext:
        return payment_context(self.app)

    async def tick(self) -> None:
        """What the worker loop does: settle simulated outcomes, deliver their events."""
        await run_simulated_provider(self.app)

    async def count(self, table: str, **where: Any) -> int:
        t = getattr(self.ctx.tables, table)
        stmt = select(func.count()).select_from(t)
        for column, value in where.items():
            stmt = stmt.where(t.c[column] == value)
        async with self.app.state.sessionmaker() as session:
            return int(await session.scalar(stmt) or 0)

    async def inbox_types(self, object_id: str) -> list[str]:
        """The types of the webhook events received about ``object_id``, in order."""
        inbox = self.ctx.tables.payment_webhook_inbox
        async with self.app.state.sessionmaker() as session:
            rows = await session.scalars(
                select(inbox.c.event_type)
                .where(inbox.c.object_id == object_id)
                .order_by(inbox.c.received_at, inbox.c.event_created_at)
            )
            return list(rows)

    async def undelivered_events(self, provider_payment_id: str) -> int:
        """The simulated provider's events about this payment not delivered yet."""
        e = self.ctx.tables.simulated_event
        stmt = select(func.count()).where(
            e.c.delivered_at.is_(None), e.c.body.contains(f'"{provider_payment_id}"')
        )
        async with self.app.state.sessionmaker() as session:
            return int(await session.scalar(stmt) or 0)

    async def event_types(self, payment_id: object) -> list[str]:
        """The types of the outbox events published about ``payment_id``, in order."""
        outbox = self.app.state.tables.outbox
        async with self.app.state.sessionmaker() as session:
            rows = await session.scalars(
                select(outbox.c.event_type)
                .where(outbox.c.envelope["payload"]["payment_id"].as_string() == str(payment_id))
                .order_by(outbox.c.id)
            )
            return list(rows)

    async def provider_intents(self, **metadata: str) -> list[dict[str, Any]]:
        """The simulated provider's PaymentIntents whose metadata has these values."""
        o = self.ctx.tables.simulated_object
        stmt = select(o.c.data).where(o.c.type == "payment_intent")
        for name, value in metadata.items():
            stmt = stmt.where(o.c.data["metadata"][name].as_string() == value)
        async with self.app.state.sessionmaker() as session:
            return [dict(d) for d in await session.scalars(stmt)]

    async def provider_transfers(self, **metadata: str) -> list[dict[str, Any]]:
        """The simulated provider's transfers (payouts) whose metadata has these values."""
        o = self.ctx.tables.simulated_object
        stmt = select(o.c.data).where(o.c.type == "transfer")
        for name, value in metadata.items():
            stmt = stmt.where(o.c.data["metadata"][name].as_string() == value)
        async with self.app.state.sessionmaker() as session:
            return [dict(d) for d in await session.scalars(stmt)]

    async def post(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        key: str | None = "",
    ) -> httpx.Response:
        """POSTs with a fresh Idempotency-Key (``key=None``: none, a string: that one)."""
        all_headers = dict(headers)
        if key is not None:
            all_headers["Idempotency-Key"] = key or uuid.uuid4().hex
        return await self.client.post(path, json=dict(body), headers=all_headers)


@contextlib.asynccontextmanager
async def payments_app(
    service: str, env: dict[str, str], create: Callable[[Any], FastAPI] | None = None
) -> AsyncIterator[PaymentsApp]:
    from tests.conftest import running, settings_for

    if create is None:
        from services.crowdfund.app import create_app as create_crowdfund
        from services.orders.app import create_app as create_orders

        create = create_orders if service == "orders" else create_crowdfund
    app = create(settings_for(service, env))
    async with running(app) as client:
        yield PaymentsApp(app=app, client=client)


def payments_env(provider: str, **extra: str) -> dict[str, str]:
    """The payment settings of a test app (on top of the ``service_env`` fixture's)."""
    env = {
        "PAYMENT_PROVIDER": provider,
        "PAYMENT_MAX_AMOUNT": "5000000",
        # A subscriber, so that published events land in the outbox (no worker delivers).
        "EVENT_SUBSCRIBERS": "referrals=http://127.0.0.1:9",
    }
    if provider == "simulated":
        env |= {
            "SIMULATED_WEBHOOK_SECRET": SIMULATED_WEBHOOK_SECRET,
            "SIMULATED_SETTLE_SECONDS": "0",
        }
    else:
        env |= {
            "STRIPE_API_KEY": STRIPE_TEST_KEY,
            "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
            "STRIPE_MAX_NETWORK_RETRIES": "0",
        }
    return env | extra


def new_reference() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


def new_merchant() -> str:
    return f"m_{uuid.uuid4().hex[:10]}"
