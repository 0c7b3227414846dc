"""Typed factories for test data: requests and rows the payment tests need, made one way.

Tests build what they need here instead of growing private helpers. Rows are made through
the service's own API (so they are exactly what production makes); provider events are
signed with the provider's own scheme.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import TokenFactory
from tests.shared.payments.support import PaymentsApp, event, new_merchant, new_reference, signed

__all__ = [
    "event",
    "new_merchant",
    "new_reference",
    "paid_payment",
    "payment_request",
    "signed",
    "start_payment",
]


def payment_request(**overrides: Any) -> dict[str, Any]:
    """The body of ``POST /v1/payments``: 10.00 CNY by a card that succeeds, for a fresh
    reference and merchant, unless overridden (``payment_method=None``: no method yet)."""
    return {
        "reference": new_reference(),
        "merchant_id": new_merchant(),
        "amount": 1000,
        "currency": "CNY",
        "payment_method": "pm_card_visa",
        **overrides,
    }


async def start_payment(
    app: PaymentsApp, payer: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    """A payment created through the API (any outcome but an error); its JSON."""
    response = await app.post("/v1/payments", payment_request(**overrides), payer)
    assert response.status_code == 201, response.text
    payment: dict[str, Any] = response.json()
    return payment


async def paid_payment(
    app: PaymentsApp, auth: TokenFactory, **overrides: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """A payment that succeeded (or, with ``capture_method="manual"``, is authorized), and an
    Authorization header of its merchant's staff."""
    merchant = overrides.pop("merchant_id", None) or new_merchant()
    payment = await start_payment(app, auth("customer"), merchant_id=merchant, **overrides)
    return payment, auth("staff", merchant_id=merchant)
