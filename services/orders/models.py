"""Tables of the orders service's own database.

The platform tables (outbox, inbox, idempotency keys, scheduled jobs) and the payment tables
come from the shared package; the domain tables of pre-sales and orders are defined here,
in one metadata, so that one Alembic history builds the whole database. Only each domain's
``repository.py`` queries them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlmodel import SQLModel

from shared.db import make_registry
from shared.payments import define_payment_tables
from shared.tables import JSON_TYPE, define_platform_tables

registry = make_registry()
metadata = registry.metadata
platform = define_platform_tables(metadata)
payments = define_payment_tables(metadata)


class Base(SQLModel, registry=registry):
    """Base of this service's SQLModel tables (its own metadata, its own database)."""


def _timestamps() -> list[Column[object]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


presale_campaign = Table(
    "presale_campaign",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("image_urls", JSON_TYPE, nullable=False),
    Column("currency", String(3), nullable=False),
    # [{"min_quantity": 1, "unit_price": 12900}, ...], ascending quantities, falling prices.
    Column("price_tiers", JSON_TYPE, nullable=False),
    Column("min_quantity", Integer, nullable=False),
    Column("capacity", Integer),
    Column("per_customer_limit", Integer),
    Column("opens_at", DateTime(timezone=True), nullable=False),
    Column("closes_at", DateTime(timezone=True), nullable=False),
    Column("balance_window_hours", Integer, nullable=False),
    Column("ships_on", Date),
    Column("return_window_days", Integer, nullable=False, server_default="7"),
    # deposit | refundable_deposit | inflated_deposit | full
    Column("deposit_type", String(20), nullable=False),
    Column("unit_deposit", BigInteger, nullable=False),
    Column("unit_deposit_credit", BigInteger, nullable=False),
    Column("early_bird_price", BigInteger),
    Column("early_bird_until", DateTime(timezone=True)),
    Column("early_bird_units", Integer),
    # draft | published | open | succeeded | failed | fulfilled | cancelled
    Column("status", String(16), nullable=False, server_default="draft"),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    # Units of live orders (paid or waiting for payment): what capacity is checked against.
    Column("reserved_quantity", Integer, nullable=False, server_default="0"),
    # Units of orders whose first payment succeeded: what the minimum and tiers count.
    Column("committed_quantity", Integer, nullable=False, server_default="0"),
    # Set when the first payment succeeds: from then on terms change only in buyers' favour.
    Column("terms_locked_at", DateTime(timezone=True)),
    Column("final_unit_price", BigInteger),
    Column("closed_at", DateTime(timezone=True)),
    Column("balance_due_by", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("reserved_quantity >= 0", name="reserved_not_negative"),
    CheckConstraint("committed_quantity >= 0", name="committed_not_negative"),
    CheckConstraint(
        "capacity IS NULL OR reserved_quantity <= capacity", name="reserved_within_capacity"
    ),
    Index("ix_presale_campaign_merchant", "merchant_id", "created_at"),
)

merchant_policy = Table(
    "merchant_policy",
    metadata,
    # A merchant's defaults for new campaigns (a campaign keeps the terms it was made with).
    Column("merchant_id", String(100), primary_key=True),
    Column("return_window_days", Integer, nullable=False),
    Column("updated_by", String(100), nullable=False),
    *_timestamps(),
)

presale_variant = Table(
    "presale_variant",
    metadata,
    Column(
        "campaign_id",
        Uuid,
        ForeignKey("presale_campaign.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("capacity", Integer),
    Column("reserved_quantity", Integer, nullable=False, server_default="0"),
    Column("committed_quantity", Integer, nullable=False, server_default="0"),
    CheckConstraint("reserved_quantity >= 0", name="reserved_not_negative"),
    CheckConstraint(
        "capacity IS NULL OR reserved_quantity <= capacity", name="reserved_within_capacity"
    ),
)

# An order's states (the ``status`` column of ``customer_order``; docs/orders.md):
# the ones that hold units of their campaign (paid, or waiting for the first payment),
PENDING = "pending_payment"
HOLDING_UNITS = (PENDING, "deposit_paid", "balance_due", "paid")
# and the ones whose buyer has paid something that still stands.
PAID = ("deposit_paid", "balance_due", "paid", "shipped", "delivered", "completed")

customer_order = Table(
    "customer_order",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("campaign_id", Uuid, ForeignKey("presale_campaign.id"), nullable=False),
    Column("merchant_id", String(100), nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    # The terms this order was placed on (a later change in buyers' favour is applied at
    # the close, see presales/pricing.py).
    Column("deposit_type", String(20), nullable=False),
    Column("early_bird_price", BigInteger),
    Column("first_amount", BigInteger, nullable=False),
    Column("deposit_credit", BigInteger, nullable=False),
    # pending_payment | deposit_paid | balance_due | paid | shipped | delivered | completed
    # | cancelled
    Column("status", String(20), nullable=False),
    Column("cancel_reason", String(40)),
    Column("final_unit_price", BigInteger),
    Column("balance_amount", BigInteger),
    Column("balance_due_by", DateTime(timezone=True)),
    # Captured by the first payment (deposit or full prepayment) and by the balance payment.
    Column("first_paid", BigInteger, nullable=False, server_default="0"),
    Column("balance_paid", BigInteger, nullable=False, server_default="0"),
    # Refunds promised (reserved when decided), per payment, and what the provider confirmed.
    Column("first_refund_promised", BigInteger, nullable=False, server_default="0"),
    Column("balance_refund_promised", BigInteger, nullable=False, server_default="0"),
    Column("refunded_amount", BigInteger, nullable=False, server_default="0"),
    Column("forfeited_amount", BigInteger, nullable=False, server_default="0"),
    Column("referral_code", String(64)),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("paid_at", DateTime(timezone=True)),
    Column("carrier", String(100)),
    Column("tracking_number", String(100)),
    Column("shipped_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    # Where it goes: a delivery address (a gift's: the buyer's own, used if it is redirected)
    # or a pickup point (团长自提) with the point's leader and the code shown when collecting.
    Column("delivery_address", JSON_TYPE),
    Column("pickup_point_id", Uuid, ForeignKey("pickup_point.id")),
    Column("pickup_leader_id", String(100)),
    Column("pickup_code", String(8)),
    Column("pickup_arrived_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("delivery_address IS NULL OR pickup_point_id IS NULL", name="one_destination"),
    CheckConstraint(
        "first_refund_promised <= first_paid AND balance_refund_promised <= balance_paid",
        name="refunds_within_paid",
    ),
    Index("ix_customer_order_campaign_status", "campaign_id", "status"),
    # The expiry sweep's: unpaid orders by expiry.
    Index(
        "ix_customer_order_unpaid_expiry",
        "expires_at",
        postgresql_where=text("status = 'pending_payment'"),
    ),
    Index("ix_customer_order_customer", "customer_id", "created_at"),
    Index("ix_customer_order_merchant", "merchant_id", "created_at"),
    # A pickup code names one order of its point (the pick list reads a point's orders by
    # it too); partial, so that orders without a point cost the hot insert nothing here.
    Index(
        "ix_customer_order_pickup_code",
        "pickup_point_id",
        "pickup_code",
        unique=True,
        postgresql_where=text("pickup_point_id IS NOT NULL"),
    ),
)

order_refund = Table(
    "order_refund",
    metadata,
    # One refund decision on an order: requested by the customer (approved or rejected by
    # staff), or made by staff or by a rule (failed or cancelled campaign, 订金 at window end).
    Column("id", Uuid, primary_key=True),
    Column("order_id", Uuid, ForeignKey("customer_order.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    # requested | rejected | approved | done
    Column("status", String(16), nullable=False),
    Column("requested_by", String(100), nullable=False),
    Column("decided_by", String(100)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decision_note", String(500)),
    # requested_by a person, or a rule: price_difference, campaign_failed, ...
    Column("kind", String(40), nullable=False),
    # Where the money comes from: the balance payment first, then the first payment.
    Column("from_first", BigInteger, nullable=False, server_default="0"),
    Column("from_balance", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint("amount > 0", name="amount_positive"),
    Index("ix_order_refund_order", "order_id", "created_at"),
)

# --- gifts (送人): services/orders/gifts/ --------------------------------------------------

order_gift = Table(
    "order_gift",
    metadata,
    Column("order_id", Uuid, ForeignKey("customer_order.id"), primary_key=True),
    Column("message", String(200), nullable=False),
    # The claim link's secret (secrets.token_urlsafe), shown only to the buyer once paid.
    Column("token", String(64), nullable=False, unique=True),
    # awaiting_claim | claimed | redirected | refunded
    Column("status", String(16), nullable=False, server_default="awaiting_claim"),
    # The merchant's terms when the gift was ordered: what happens to it unclaimed, and when.
    Column("on_unclaimed", String(16), nullable=False),
    Column("claim_by", DateTime(timezone=True), nullable=False),
    Column("recipient_id", String(100)),
    Column("recipient_address", JSON_TYPE),
    Column("claimed_at", DateTime(timezone=True)),
    Column("resolved_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint(
        "status <> 'claimed' OR (recipient_id IS NOT NULL AND recipient_address IS NOT NULL)",
        name="claimed_has_recipient",
    ),
)

gift_policy = Table(
    "gift_policy",
    metadata,
    # A merchant's terms for new gifts (a gift keeps the terms it was ordered on).
    Column("merchant_id", String(100), primary_key=True),
    Column("claim_days", Integer, nullable=False),
    # redirect (to the buyer's address) | refund
    Column("on_unclaimed", String(16), nullable=False),
    Column("updated_by", String(100), nullable=False),
    *_timestamps(),
)

# --- pickup points (团长自提): services/orders/pickup/ ---------------------------------------

pickup_leader = Table(
    "pickup_leader",
    metadata,
    # A customer who applied to run pickup points for a merchant, approved by its staff.
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("user_id", String(100), nullable=False),
    # pending | active | rejected | suspended
    Column("status", String(16), nullable=False),
    Column("real_name", String(100), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("decided_by", String(100)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decision_note", String(500)),
    *_timestamps(),
    UniqueConstraint("merchant_id", "user_id"),
    Index("ix_pickup_leader_merchant", "merchant_id", "created_at"),
)

pickup_point = Table(
    "pickup_point",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("leader_id", Uuid, ForeignKey("pickup_leader.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("address", String(300), nullable=False),
    Column("contact_name", String(100), nullable=False),
    Column("contact_phone", String(32), nullable=False),
    Column("opening_hours", String(200), nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    *_timestamps(),
    Index("ix_pickup_point_merchant", "merchant_id", "created_at"),
    Index("ix_pickup_point_leader", "leader_id"),
)
