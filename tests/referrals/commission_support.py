"""Helpers of the commission tests: a program, distributors, and signed order events."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.events import SIGNATURE_HEADER, Envelope, sign
from shared.events.contracts import OrderCompleted, OrderEvent, OrderPaid, PledgeEvent
from tests.conftest import TEST_EVENT_SECRET, TokenFactory


@dataclass
class Program:
    client: httpx.AsyncClient
    auth: TokenFactory
    merchant_id: str = field(default_factory=lambda: f"m_{uuid.uuid4().hex[:10]}")

    @property
    def staff(self) -> dict[str, str]:
        return self.auth("staff", merchant_id=self.merchant_id)

    async def rules(self, **overrides: Any) -> httpx.Response:
        body = {
            "enrollment": "open",
            "attribution": "first_touch",
            "level1_bps": 1000,
            "level2_bps": 500,
            "leader_bps": 0,
            "max_total_bps": 3000,
            **overrides,
        }
        return await self.client.put("/v1/commission-rules", json=body, headers=self.staff)

    async def join(self, user_id: str, via: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "real_name": "Li Lei",
            "phone": "+86 138 0000 0000",
        }
        if via is not None:
            body["via_code"] = via
        response = await self.client.post(
            "/v1/distributors", json=body, headers=self.auth("customer", sub=user_id)
        )
        assert response.status_code == 201, response.text
        joined: dict[str, Any] = response.json()
        return joined

    async def balances(self, distributor_id: str) -> dict[str, int]:
        response = await self.client.get(f"/v1/distributors/{distributor_id}", headers=self.staff)
        assert response.status_code == 200, response.text
        found: dict[str, int] = response.json()["balances"]
        return found


@dataclass
class Order:
    """One order's events, as orders publishes them (totals are cumulative)."""

    merchant_id: str
    customer_id: str
    referral_code: str | None
    pickup_leader_id: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    paid: int = 0
    refunded: int = 0

    def event(self, contract: type[OrderEvent], **extra: Any) -> Envelope:
        payload = contract(
            order_id=self.id,
            campaign_id=uuid.UUID(int=1),
            merchant_id=self.merchant_id,
            customer_id=self.customer_id,
            sku="S",
            quantity=1,
            currency="CNY",
            referral_code=self.referral_code,
            pickup_point_id=uuid.UUID(int=2) if self.pickup_leader_id else None,
            pickup_leader_id=self.pickup_leader_id,
            paid_total=self.paid,
            refunded_total=self.refunded,
            **extra,
        )
        return Envelope(
            type=contract.event_type,
            source="orders",
            version=contract.version,
            payload=payload.model_dump(mode="json"),
        )


@dataclass
class Pledge:
    """One crowdfunding pledge's events, as crowdfund publishes them (totals cumulative)."""

    merchant_id: str
    customer_id: str
    referral_code: str | None
    project_id: uuid.UUID = field(default_factory=uuid.uuid4)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    paid: int = 0
    refunded: int = 0

    def event(self, contract: type[PledgeEvent], **extra: Any) -> Envelope:
        payload = contract(
            pledge_id=self.id,
            project_id=self.project_id,
            merchant_id=self.merchant_id,
            customer_id=self.customer_id,
            currency="CNY",
            referral_code=self.referral_code,
            paid_total=self.paid,
            refunded_total=self.refunded,
            **extra,
        )
        return Envelope(
            type=contract.event_type,
            source="crowdfund",
            version=contract.version,
            payload=payload.model_dump(mode="json"),
        )


async def deliver(client: httpx.AsyncClient, envelope: Envelope) -> httpx.Response:
    body = envelope.model_dump_json().encode()
    return await client.post(
        "/internal/events",
        content=body,
        headers={
            SIGNATURE_HEADER: sign(TEST_EVENT_SECRET, body),
            "content-type": "application/json",
        },
    )


async def pay(
    client: httpx.AsyncClient, program: Program, customer: str, code: str | None, amount: int
) -> Order:
    """A new order of ``customer`` through ``code``, paid in full (``amount``)."""
    order = Order(program.merchant_id, customer, code)
    order.paid = amount
    answer = await deliver(
        client, order.event(OrderPaid, stage="full", amount=amount, fully_paid=True)
    )
    assert answer.status_code == 200, answer.text
    return order


async def earner(
    program: Program, client: httpx.AsyncClient, paid: int
) -> tuple[dict[str, Any], dict[str, str], Order]:
    """A verified distributor whose order of ``paid`` completed (10 %: available)."""
    await program.rules(level1_bps=1000, level2_bps=0, min_withdrawal=100, withdrawal_fee=50)
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    order = Order(program.merchant_id, f"buyer-{uuid.uuid4().hex[:6]}", seller["code"])
    order.paid = paid
    await deliver(client, order.event(OrderPaid, stage="full", amount=paid, fully_paid=True))
    await deliver(client, order.event(OrderCompleted))
    return seller, program.auth("customer", sub=user), order


async def withdraw(
    client: httpx.AsyncClient, who: dict[str, str], distributor_id: str, amount: int
) -> httpx.Response:
    return await client.post(
        "/v1/withdrawals",
        json={"distributor_id": distributor_id, "amount": amount},
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )


def signed_batch(
    envelopes: list[Envelope], secret: str = TEST_EVENT_SECRET
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a batch, as the relay sends it."""
    body = json.dumps(
        {"events": [e.model_dump(mode="json") for e in envelopes]}, separators=(",", ":")
    ).encode()
    return body, {SIGNATURE_HEADER: sign(secret, body), "content-type": "application/json"}


async def deliver_batch(client: httpx.AsyncClient, envelopes: list[Envelope]) -> httpx.Response:
    body, headers = signed_batch(envelopes)
    return await client.post("/internal/events/batch", content=body, headers=headers)
