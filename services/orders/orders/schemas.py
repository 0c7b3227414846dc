"""Request and response bodies of the order endpoints."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from services.orders.orders.repository import OrderRow, RefundDecisionRow
from services.orders.presales.schemas import MAX_PRICE, Sku
from shared.payments import PaymentRow
from shared.text import SafeMultilineStr, SafeStr

_STRICT = ConfigDict(extra="forbid")
MAX_ORDER_QUANTITY = 10_000

OrderStatus = Literal[
    "pending_payment",
    "deposit_paid",
    "balance_due",
    "paid",
    "shipped",
    "delivered",
    "completed",
    "cancelled",
]
PayMethod = Literal["card", "wechat_pay", "alipay"]


class PayIn(BaseModel):
    model_config = _STRICT

    method: PayMethod = "card"
    payment_method: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="A payment method id or test token: given, the payment is confirmed now.",
    )


Phone = Annotated[str, Field(min_length=4, max_length=32, pattern=r"^\+?[0-9][0-9 ()-]*$")]


class DeliveryAddress(BaseModel):
    """Where an order ships: to the buyer, or (a gift) to the recipient who claimed it."""

    model_config = _STRICT

    recipient_name: SafeStr = Field(min_length=1, max_length=100)
    phone: Phone
    lines: list[Annotated[SafeStr, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=4, description="Street, building, room: 1 to 4 lines."
    )
    postal_code: SafeStr | None = Field(None, min_length=1, max_length=20)


class GiftIn(BaseModel):
    model_config = _STRICT

    message: SafeMultilineStr = Field(min_length=1, max_length=200)


class OrderCreate(PayIn):
    sku: str = Sku
    quantity: StrictInt = Field(ge=1, le=MAX_ORDER_QUANTITY)
    referral_code: SafeStr | None = Field(None, min_length=1, max_length=64)
    purchase_code: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="A code campaign's purchase code (F码); omitted: the buyer's own, if any.",
    )
    delivery_address: DeliveryAddress | None = Field(
        None, description="Where it ships; a gift's: the buyer's own, if it is redirected."
    )
    pickup_point_id: uuid.UUID | None = Field(
        None, description="An active pickup point of the merchant instead of an address."
    )
    gift: GiftIn | None = Field(None, description="送人: the recipient claims it by a link.")


class ShipIn(BaseModel):
    model_config = _STRICT

    carrier: SafeStr = Field(min_length=1, max_length=100)
    tracking_number: SafeStr = Field(min_length=1, max_length=100)


class RefundRequestIn(BaseModel):
    model_config = _STRICT

    reason: SafeStr = Field(min_length=1, max_length=500)
    amount: StrictInt | None = Field(
        None, ge=1, le=MAX_PRICE * 1000, description="Minor units; omitted: all that was paid."
    )


class DecisionIn(BaseModel):
    model_config = _STRICT

    note: SafeStr | None = Field(None, max_length=500)


class PaymentSummary(BaseModel):
    """The payment to complete (or completed): what the mini-program needs to pay it."""

    id: uuid.UUID
    status: str
    amount: int
    currency: str
    method: str
    client_secret: str | None
    next_action: dict[str, object] | None
    failure_code: str | None
    failure_message: str | None

    @classmethod
    def of(cls, p: PaymentRow, *, show_secret: bool) -> PaymentSummary:
        return cls(
            id=p.id,
            status=p.status,
            amount=p.amount,
            currency=p.currency,
            method=p.method,
            client_secret=p.client_secret if show_secret else None,
            next_action=p.next_action,
            failure_code=p.failure_code,
            failure_message=p.failure_message,
        )


class OrderOut(BaseModel):
    id: uuid.UUID
    campaign_id: uuid.UUID
    merchant_id: str
    customer_id: str
    sku: str
    quantity: int
    currency: str
    status: OrderStatus
    cancel_reason: str | None
    deposit_type: str
    early_bird_price: int | None
    first_amount: int = Field(description="The deposit, or the full prepayment.")
    deposit_credit: int
    final_unit_price: int | None
    balance_amount: int | None
    balance_due_by: datetime | None
    paid_total: int
    refunded_total: int
    refund_pending: int = Field(description="Refunds decided, not confirmed by the provider yet.")
    forfeited_amount: int
    referral_code: str | None
    group_id: uuid.UUID | None = Field(description="The group buy (拼团) it was placed into.")
    group_unit_price: int | None = Field(description="The group (or leader) price it pays.")
    member_unit_price: int | None = Field(description="The buyer's member tier price, if any.")
    expires_at: datetime = Field(description="An unpaid order gives its units back then.")
    carrier: str | None
    tracking_number: str | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    delivery_address: DeliveryAddress | None
    pickup_point_id: uuid.UUID | None
    pickup_code: str | None = Field(description="Shown at the pickup point to collect.")
    created_at: datetime
    payment: PaymentSummary | None = None

    @classmethod
    def of(cls, x: OrderRow, payment: PaymentSummary | None = None) -> OrderOut:
        return cls(
            id=x.id,
            campaign_id=x.campaign_id,
            merchant_id=x.merchant_id,
            customer_id=x.customer_id,
            sku=x.sku,
            quantity=x.quantity,
            currency=x.currency,
            status=x.status,
            cancel_reason=x.cancel_reason,
            deposit_type=x.deposit_type,
            early_bird_price=x.early_bird_price,
            first_amount=x.first_amount,
            deposit_credit=x.deposit_credit,
            final_unit_price=x.final_unit_price,
            balance_amount=x.balance_amount,
            balance_due_by=x.balance_due_by,
            paid_total=x.paid_total,
            refunded_total=x.refunded_amount,
            refund_pending=x.refund_promised - x.refunded_amount,
            forfeited_amount=x.forfeited_amount,
            referral_code=x.referral_code,
            group_id=x.group_id,
            group_unit_price=x.group_unit_price,
            member_unit_price=x.member_unit_price,
            expires_at=x.expires_at,
            carrier=x.carrier,
            tracking_number=x.tracking_number,
            shipped_at=x.shipped_at,
            delivered_at=x.delivered_at,
            completed_at=x.completed_at,
            cancelled_at=x.cancelled_at,
            delivery_address=x.delivery_address,
            pickup_point_id=x.pickup_point_id,
            pickup_code=x.pickup_code,
            created_at=x.created_at,
            payment=payment,
        )


class RefundDecisionOut(BaseModel):
    id: uuid.UUID
    order_id: uuid.UUID
    amount: int
    reason: str
    kind: str
    status: str
    requested_by: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime

    @classmethod
    def of(cls, x: RefundDecisionRow) -> RefundDecisionOut:
        return cls(
            id=x.id,
            order_id=x.order_id,
            amount=x.amount,
            reason=x.reason,
            kind=x.kind,
            status=x.status,
            requested_by=x.requested_by,
            decided_by=x.decided_by,
            decided_at=x.decided_at,
            decision_note=x.decision_note,
            created_at=x.created_at,
        )


class OrderFilters(BaseModel):
    status: OrderStatus | None = None
    campaign_id: uuid.UUID | None = None
    customer_id: SafeStr | None = Field(None, max_length=100)
    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None


class DailyPoint(BaseModel):
    day: date
    orders_placed: int
    orders_paid: int
    paid: int = Field(description="Minor units paid on the orders placed that day.")


class CampaignStats(BaseModel):
    campaign_id: uuid.UUID
    currency: str
    status: str
    units_committed: int
    buyers: int
    orders_placed: int
    orders_paid: int
    orders_cancelled: int
    conversion_bps: int = Field(description="Orders paid / orders placed, in basis points.")
    deposits_paid: int
    prepayments_paid: int
    balances_paid: int
    refunded: int
    forfeited: int = Field(description="定金 kept after unpaid balances.")
    gmv: int = Field(description="Money paid and not refunded, in minor units.")
    timezone: str
    daily: list[DailyPoint]
