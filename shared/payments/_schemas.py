from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from shared.payments._provider import CaptureMethod, Method
from shared.payments._repository import PaymentRow, RefundRow, SetupRow, StatusChangeRow
from shared.payments._state import PaymentView
from shared.text import SafeStr

__all__ = [
    "CaptureIn",
    "ConfirmIn",
    "PaymentCreate",
    "PaymentOut",
    "RefundCreate",
    "RefundOut",
    "SetupCreate",
    "SetupOut",
    "SimulatedActionIn",
    "StatusChangeOut",
    "WebhookReceipt",
]

_STRICT = ConfigDict(extra="forbid")


class PaymentCreate(BaseModel):
    model_config = _STRICT

    reference: SafeStr = Field(
        min_length=1,
        max_length=200,
        description="The business object paid for, e.g. `order:8f14e45f`.",
    )
    merchant_id: SafeStr = Field(min_length=1, max_length=100)
    amount: StrictInt = Field(description="Minor units (fen, cents); positive.")
    currency: SafeStr = Field(max_length=16, description="ISO 4217, e.g. CNY.")
    method: Method = "card"
    capture_method: CaptureMethod = Field(
        "automatic", description="`manual` authorizes now and captures later (cards only)."
    )
    payment_method: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=255,
        description=(
            "A payment method id or test token: given, the payment is confirmed now; "
            "omitted, the client confirms it with `client_secret`."
        ),
    )


class ConfirmIn(BaseModel):
    model_config = _STRICT

    payment_method: SafeStr = Field(min_length=1, max_length=255)


class CaptureIn(BaseModel):
    model_config = _STRICT

    amount: StrictInt | None = Field(None, description="Default: the whole authorized amount.")


class RefundCreate(BaseModel):
    model_config = _STRICT

    amount: StrictInt | None = Field(None, description="Default: all that remains refundable.")
    reason: Literal["requested_by_customer", "duplicate", "fraudulent"] | None = None


class SimulatedActionIn(BaseModel):
    model_config = _STRICT

    succeed: bool = True


class SetupCreate(BaseModel):
    model_config = _STRICT

    payment_method: SafeStr | None = Field(None, min_length=1, max_length=255)


class RefundOut(BaseModel):
    id: uuid.UUID
    payment_id: uuid.UUID
    provider_refund_id: str | None
    amount: int
    currency: str
    status: str
    reason: str | None
    failure_reason: str | None
    requested_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: RefundRow) -> RefundOut:
        return cls(
            id=row.id,
            payment_id=row.payment_id,
            provider_refund_id=row.provider_refund_id,
            amount=row.amount,
            currency=row.currency,
            status=row.status,
            reason=row.reason,
            failure_reason=row.failure_reason,
            requested_by=row.requested_by,
            created_at=row.created_at,
        )


class StatusChangeOut(BaseModel):
    from_status: str | None
    to_status: str
    source: str
    failure_code: str | None
    at: datetime

    @classmethod
    def of(cls, row: StatusChangeRow) -> StatusChangeOut:
        return cls(
            from_status=row.from_status,
            to_status=row.to_status,
            source=row.source,
            failure_code=row.failure_code,
            at=row.created_at,
        )


class PaymentOut(BaseModel):
    id: uuid.UUID
    reference: str
    merchant_id: str
    customer_id: str
    provider: str
    provider_payment_id: str | None
    method: str
    capture_method: str
    off_session: bool
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    net_paid: int = Field(description="amount_captured - amount_refunded")
    status: str
    failure_code: str | None
    failure_message: str | None = Field(description="What to tell the customer, in plain words.")
    next_action: dict[str, Any] | None
    client_secret: str | None = Field(description="Only shown to the paying customer.")
    dispute_status: str | None
    dispute_amount: int | None
    refunds: list[RefundOut]
    status_history: list[StatusChangeOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: PaymentView, *, show_secret: bool) -> PaymentOut:
        p: PaymentRow = view.payment
        return cls(
            id=p.id,
            reference=p.reference,
            merchant_id=p.merchant_id,
            customer_id=p.customer_id,
            provider=p.provider,
            provider_payment_id=p.provider_payment_id,
            method=p.method,
            capture_method=p.capture_method,
            off_session=p.off_session,
            amount=p.amount,
            currency=p.currency,
            amount_captured=p.amount_captured,
            amount_refunded=p.amount_refunded,
            net_paid=p.amount_captured - p.amount_refunded,
            status=p.status,
            failure_code=p.failure_code,
            failure_message=p.failure_message,
            next_action=p.next_action,
            client_secret=p.client_secret if show_secret else None,
            dispute_status=p.dispute_status,
            dispute_amount=p.dispute_amount,
            refunds=[RefundOut.of(r) for r in view.refunds],
            status_history=[StatusChangeOut.of(h) for h in view.history],
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class SetupOut(BaseModel):
    id: uuid.UUID
    customer_id: str
    provider: str
    provider_setup_id: str
    status: str
    payment_method_id: str | None
    failure_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None
    client_secret: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: SetupRow) -> SetupOut:
        return cls(
            id=row.id,
            customer_id=row.customer_id,
            provider=row.provider,
            provider_setup_id=row.provider_setup_id,
            status=row.status,
            payment_method_id=row.payment_method_id,
            failure_code=row.failure_code,
            failure_message=row.failure_message,
            next_action=row.next_action,
            client_secret=row.client_secret,
            created_at=row.created_at,
        )


class WebhookReceipt(BaseModel):
    event_id: str
    event_type: str
    status: Literal["applied", "duplicate", "ignored", "unknown_object", "stale", "invalid"]
