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
    ForeignKeyConstraint,
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
    # Only some customers may order (its eligibility is tiers or code): an order reads the
    # eligibility only then. Written with the eligibility, under this row's lock, so the
    # reservation (which locks the row) returns it exact.
    Column("restricted", Boolean, nullable=False, server_default=text("false")),
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
    # A group buy's order (拼团): its group, and the group (or leader) price it was placed at.
    Column("group_id", Uuid, ForeignKey("group_buy.id")),
    Column("group_unit_price", BigInteger),
    # A member tier's price (eligibility/): the order pays at most this per unit.
    Column("member_unit_price", BigInteger),
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

# --- group buys (拼团, docs/orders.md) ------------------------------------------------------

group_buy_offer = Table(
    "group_buy_offer",
    metadata,
    # A campaign's group buying terms; a group keeps the size, time and virtual completion
    # it was opened with, and an order the price it was placed at.
    Column(
        "campaign_id",
        Uuid,
        ForeignKey("presale_campaign.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("group_size", Integer, nullable=False),
    Column("time_limit_minutes", Integer, nullable=False),
    # [{"sku": "S", "unit_price": 9900, "leader_unit_price": 8900 or null}, ...]
    Column("prices", JSON_TYPE, nullable=False),
    Column("multiple_groups", Boolean, nullable=False),
    Column("virtual_completion", Boolean, nullable=False),
    Column("updated_by", String(100), nullable=False),
    *_timestamps(),
    CheckConstraint("group_size BETWEEN 2 AND 100", name="group_size_in_range"),
)

group_buy = Table(
    "group_buy",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("campaign_id", Uuid, ForeignKey("presale_campaign.id"), nullable=False),
    Column("code", String(16), nullable=False, unique=True),
    Column("leader_customer_id", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    Column("virtual_completion", Boolean, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # open | formed | failed | virtually_formed
    Column("status", String(20), nullable=False, server_default="open"),
    # Members whose orders hold a place (paid or waiting for payment), and the paid ones:
    # kept under the campaign's lock, bounded here so that N can never be exceeded.
    Column("places_taken", Integer, nullable=False, server_default="0"),
    Column("paid_members", Integer, nullable=False, server_default="0"),
    Column("settled_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("places_taken BETWEEN 0 AND size", name="places_within_size"),
    CheckConstraint("paid_members BETWEEN 0 AND places_taken", name="paid_within_places"),
    # The joinable groups of a campaign, soonest to expire first (凑团).
    Index(
        "ix_group_buy_open", "campaign_id", "expires_at", postgresql_where=text("status = 'open'")
    ),
)

group_member = Table(
    "group_member",
    metadata,
    # One per order placed into a group. It is written with the place, before its order row
    # in the same transaction: hence the deferred foreign key.
    Column(
        "order_id",
        Uuid,
        ForeignKey("customer_order.id", deferrable=True, initially="DEFERRED"),
        primary_key=True,
    ),
    Column("group_id", Uuid, ForeignKey("group_buy.id"), nullable=False),
    Column("campaign_id", Uuid, nullable=False),
    Column("customer_id", String(100), nullable=False),
    # As the client gave them when ordering (shown on the public group page).
    Column("display_name", String(50), nullable=False),
    Column("avatar_url", String(1000)),
    Column("leader", Boolean, nullable=False),
    # pending_payment | paid | left (its order ended while the group was open: place freed)
    Column("status", String(20), nullable=False),
    Column("paid_at", DateTime(timezone=True)),
    Column("left_at", DateTime(timezone=True)),
    *_timestamps(),
    Index("ix_group_member_group", "group_id", "created_at"),
    Index("ix_group_member_customer", "campaign_id", "customer_id"),
)


# --- eligibility (services/orders/eligibility/; docs/orders.md "Eligibility") ------------

member_tier = Table(
    "member_tier",
    metadata,
    # A merchant's own member tiers (普通/银卡/金卡); the higher the rank, the better the tier.
    Column("merchant_id", String(100), primary_key=True),
    Column("code", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("rank", Integer, nullable=False),
    *_timestamps(),
)

customer_tier = Table(
    "customer_tier",
    metadata,
    # A customer's tier with a merchant (NULL: none). ``set_at`` is when the fact held at its
    # source (staff: the request; an event: its occurred_at): an older fact never wins.
    Column("merchant_id", String(100), primary_key=True),
    Column("customer_id", String(100), primary_key=True),
    Column("tier_code", String(32)),
    Column("set_at", DateTime(timezone=True), nullable=False),
    Column("set_by", String(100), nullable=False),
    *_timestamps(),
    ForeignKeyConstraint(
        ["merchant_id", "tier_code"], ["member_tier.merchant_id", "member_tier.code"]
    ),
)

presale_eligibility = Table(
    "presale_eligibility",
    metadata,
    # Who may order from a campaign; a campaign without a row is open to everybody.
    Column(
        "campaign_id",
        Uuid,
        ForeignKey("presale_campaign.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # open | tiers | code
    Column("mode", String(8), nullable=False),
    Column("units_per_code", Integer, nullable=False, server_default="1"),
    # Reservations (预约) before the opening, drawn by lottery when they exceed the places.
    Column("reservation_places", Integer),
    Column("code_valid_hours", Integer, nullable=False, server_default="24"),
    # sha256(seed), published from the start; the seed is revealed by the draw.
    Column("draw_commitment", String(64)),
    Column("draw_seed", String(64)),
    Column("drawn_at", DateTime(timezone=True)),
    Column("draw_entries", Integer),
    Column("draw_digest", String(64)),
    Column("updated_by", String(100), nullable=False),
    *_timestamps(),
)

presale_tier_rule = Table(
    "presale_tier_rule",
    metadata,
    # A member tier that may order from a ``tiers`` campaign, with its own limit and price.
    Column(
        "campaign_id",
        Uuid,
        ForeignKey("presale_eligibility.campaign_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tier_code", String(32), primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("position", Integer, nullable=False),
    Column("per_customer_limit", Integer),
    Column("unit_price", BigInteger),
    ForeignKeyConstraint(
        ["merchant_id", "tier_code"], ["member_tier.merchant_id", "member_tier.code"]
    ),
)

purchase_code = Table(
    "purchase_code",
    metadata,
    # One purchase right (F码): only its SHA-256 is kept, the code itself is shown once.
    Column("id", Uuid, primary_key=True),
    Column("campaign_id", Uuid, ForeignKey("presale_campaign.id"), nullable=False),
    Column("batch_id", Uuid, nullable=False),
    # batch (staff) | lottery (a reservation that won)
    Column("source", String(8), nullable=False),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("hint", String(4), nullable=False),
    # Bound: only this customer may redeem or use it (set at issue, or by redeeming).
    Column("customer_id", String(100)),
    # issued | redeemed | used (an unpaid order that ends gives it back: redeemed)
    Column("status", String(8), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    # The order that holds it; written with the order, in the order's transaction.
    Column(
        "order_id",
        Uuid,
        ForeignKey("customer_order.id", deferrable=True, initially="DEFERRED"),
    ),
    Column("created_by", String(100), nullable=False),
    Column("redeemed_at", DateTime(timezone=True)),
    Column("used_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("status = 'issued' OR customer_id IS NOT NULL", name="bound_once_redeemed"),
    CheckConstraint("(status = 'used') = (order_id IS NOT NULL)", name="order_when_used"),
    Index("ix_purchase_code_campaign", "campaign_id", "created_at"),
    Index("ix_purchase_code_holder", "campaign_id", "customer_id"),
    Index("ix_purchase_code_order", "order_id", postgresql_where=text("order_id IS NOT NULL")),
)

presale_reservation = Table(
    "presale_reservation",
    metadata,
    # A place asked for before the opening (one per customer and campaign).
    Column("id", Uuid, primary_key=True),
    Column("campaign_id", Uuid, ForeignKey("presale_campaign.id"), nullable=False),
    Column("customer_id", String(100), nullable=False),
    # reserved | won | not_drawn
    Column("status", String(10), nullable=False),
    # Set by the draw: HMAC-SHA256(seed, id) in hex, and the position it gave (1 = first).
    Column("ticket", String(64)),
    Column("rank", Integer),
    Column("code_id", Uuid, ForeignKey("purchase_code.id")),
    *_timestamps(),
    UniqueConstraint("campaign_id", "customer_id"),
    Index("ix_presale_reservation_campaign_rank", "campaign_id", "rank", "id"),
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
