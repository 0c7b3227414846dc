"""Event contracts: registered once, enforced at publish, documented from the models."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from services.orders.models import platform
from shared.events import EventPayload, EventPublisher
from shared.events.contracts import CONTRACTS, PaymentSucceeded, contracts_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_every_payment_event_has_a_contract() -> None:
    published = {
        "payment.succeeded",
        "payment.canceled",
        "payment.failed",
        "payment.refunded",
        "payment.refund_failed",
        "payment.disputed",
        "payment.dispute_closed",
    }
    assert published <= {event_type for event_type, _ in CONTRACTS}


def test_a_contract_is_registered_once() -> None:
    with pytest.raises(TypeError, match="has a contract already"):

        class Again(EventPayload, event_type="payment.succeeded"):
            pass


async def test_publishing_something_that_is_not_a_registered_contract_is_refused() -> None:
    class Unregistered(EventPayload):
        n: int

    publisher = EventPublisher(source="orders", tables=platform, subscribers=[])
    with pytest.raises(TypeError, match="not a registered event contract"):
        await publisher.publish(None, Unregistered(n=1))  # type: ignore[arg-type]


def test_payment_contracts_refuse_floats_for_money() -> None:
    fields = {
        "payment_id": uuid.uuid4(),
        "reference": "order:1",
        "merchant_id": "m",
        "customer_id": "c",
        "provider": "simulated",
        "currency": "CNY",
        "amount": 100,
        "amount_captured": 100,
        "amount_refunded": 0,
    }
    assert PaymentSucceeded(**fields).amount == 100
    with pytest.raises(ValueError, match="amount"):
        PaymentSucceeded(**{**fields, "amount": 99.5})


def test_the_event_docs_are_generated_from_the_contracts() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    found = re.search(
        r"<!-- contracts:start.*?-->\n(.*)<!-- contracts:end -->", text, flags=re.DOTALL
    )
    assert found, "docs/events.md lacks the generated contracts section"
    assert found.group(1) == contracts_markdown(), (
        "docs/events.md is out of date: regenerate the section with "
        "`.venv/bin/python -m shared.events.contracts`"
    )
