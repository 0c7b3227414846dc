"""Tables of the crowdfund service's own database.

The platform tables (outbox, inbox, idempotency keys, scheduled jobs) and the payment tables
come from the shared package; the domain tables of projects, pledges and settlements are
defined here, in one metadata, so that one Alembic history builds the whole database. Only
each domain's ``repository.py`` queries them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
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
# A Stripe connected account id (shared.payments.PAYOUT_ACCOUNT_PATTERN), in SQL.
PAYOUT_ACCOUNT_SQL = "'^acct_[A-Za-z0-9]{6,64}$'"


class Base(SQLModel, registry=registry):
    """Base of this service's SQLModel tables (its own metadata, its own database)."""


def _timestamps() -> list[Column[object]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


project = Table(
    "project",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("title", String(200), nullable=False),
    Column("story", Text, nullable=False, server_default=""),
    Column("image_urls", JSON_TYPE, nullable=False),
    Column("video_urls", JSON_TYPE, nullable=False),
    Column("category", String(40), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("goal", BigInteger, nullable=False),
    # Staff data only (三个爸爸's own ¥500万 under the announced ¥1000万): never shown publicly.
    Column("internal_target", BigInteger),
    Column("launch_at", DateTime(timezone=True), nullable=False),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    # all_or_nothing | flexible
    Column("funding_model", String(16), nullable=False),
    # 无私支持: a pledge without reward, from this minimum; NULL: not offered.
    Column("support_minimum", BigInteger),
    Column("risks", Text, nullable=False, server_default=""),
    Column("delivery_promise", Text, nullable=False, server_default=""),
    # 摩点's rule: no cancellation or lowering of a pledge in the last hour.
    Column("no_refund_last_hour", Boolean, nullable=False, server_default=text("false")),
    # Set at approval (the platform's rate then): the project keeps it.
    Column("platform_fee_bps", Integer),
    # draft | submitted | rejected | approved | live | succeeded | failed | settled | cancelled
    Column("status", String(16), nullable=False, server_default="draft"),
    Column("suspended", Boolean, nullable=False, server_default=text("false")),
    Column("review_reason", String(500)),
    Column("reviewed_by", String(100)),
    Column("reviewed_at", DateTime(timezone=True)),
    # Confirmed pledges (card saved, or paid): what the goal and stretch goals count.
    Column("pledged_amount", BigInteger, nullable=False, server_default="0"),
    # Locked at the deadline: the public total from then on.
    Column("final_amount", BigInteger),
    Column("final_backers", Integer),
    Column("decided_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    # The creator's Stripe connected account: the settlement's payout is transferred to it;
    # without one, an admin pays outside and marks the settlement paid.
    Column("payout_account", String(80)),
    *_timestamps(),
    CheckConstraint("goal > 0", name="goal_positive"),
    CheckConstraint("pledged_amount >= 0", name="pledged_not_negative"),
    CheckConstraint(
        f"payout_account IS NULL OR payout_account ~ {PAYOUT_ACCOUNT_SQL}",
        name="payout_account_shape",
    ),
    Index("ix_project_merchant", "merchant_id", "created_at"),
)

reward = Table(
    "reward",
    metadata,
    # A tier (档位) or an add-on; both hold places the same way.
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),  # tier | addon
    Column("position", Integer, nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    # A tier's minimum pledge per unit; an add-on's price per unit.
    Column("amount", BigInteger, nullable=False),
    Column("quantity_limit", Integer),
    Column("per_backer_limit", Integer),
    Column("starts_at", DateTime(timezone=True)),
    Column("ends_at", DateTime(timezone=True)),
    Column("delivery_month", String(7)),  # YYYY-MM
    # {"CN": 0, "HK": 2000, "*": 5000}: fee per unit by region ("*": anywhere else);
    # NULL: nothing to ship.
    Column("shipping_fees", JSON_TYPE),
    # Units held by live pledges (pending, confirmed, paid, or in the fix window).
    Column("reserved", Integer, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint(
        "quantity_limit IS NULL OR reserved <= quantity_limit", name="reserved_within_limit"
    ),
    Index("ix_reward_project", "project_id", "position"),
)

stretch_goal = Table(
    "stretch_goal",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("threshold", BigInteger, nullable=False),
    Column("title", String(200), nullable=False),
    Column("unlocks", Text, nullable=False, server_default=""),
    Column("unlocked_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("threshold > 0", name="threshold_positive"),
    Index("ix_stretch_goal_project", "project_id", "threshold", unique=True),
)

project_update = Table(
    "project_update",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("visibility", String(8), nullable=False),  # public | backers
    Column("posted_by", String(100), nullable=False),
    *_timestamps(),
    Index("ix_project_update_project", "project_id", "created_at"),
)

# A pledge's states (docs/crowdfund.md draws the machine):
PENDING = "pending"  # card not saved yet, or the immediate payment not made yet
CONFIRMED = "confirmed"  # card saved: charged if the project succeeds
COLLECTED = "collected"  # paid (wallet or flexible at once; cards at the deadline)
CHARGE_DUE = "charge_due"  # the project succeeded: waiting for the charge workers
CHARGING = "charging"  # a worker (or the backer) holds the charge's lease
PAYMENT_FAILED = "payment_failed"  # in the fix window
# the ones that hold their reward's places,
HOLDING = (PENDING, CONFIRMED, COLLECTED, CHARGE_DUE, CHARGING, PAYMENT_FAILED)
# the ones the goal counts before the deadline,
COUNTED = (CONFIRMED, COLLECTED)
# and the ones the charge workers own after it.
CHARGEABLE = (CHARGE_DUE, CHARGING, PAYMENT_FAILED)

pledge = Table(
    "pledge",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, ForeignKey("project.id"), nullable=False),
    Column("merchant_id", String(100), nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("reward_id", Uuid, ForeignKey("reward.id")),  # NULL: 无私支持
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String(16), nullable=False),  # card | wechat_pay | alipay
    Column("region", String(8)),
    Column("shipping_fee", BigInteger, nullable=False, server_default="0"),
    Column("referral_code", String(64)),
    Column("source", String(40)),
    # pending | confirmed | collected | charge_due | charging | payment_failed | dropped
    # | cancelled | expired
    Column("status", String(16), nullable=False),
    Column("cancel_reason", String(40)),
    Column("hold_expires_at", DateTime(timezone=True), nullable=False),
    # Cards on all-or-nothing projects: the saved payment method (payment_setup.id).
    Column("setup_id", Uuid),
    # Off-session charges: the attempt (1, 2, 3... each its own payment and provider key),
    # its payment, when the next one is due, and the lease of whoever runs it.
    Column("charge_attempt", Integer, nullable=False, server_default="0"),
    Column("charge_payment_id", Uuid),
    Column("charge_at", DateTime(timezone=True)),
    Column("charge_locked_until", DateTime(timezone=True)),
    Column("failure_code", String(100)),
    Column("first_failed_at", DateTime(timezone=True)),
    Column("fix_until", DateTime(timezone=True)),
    # Money: what was captured (by which payment), its payment fee, refunds promised and
    # confirmed by the provider.
    Column("paid", BigInteger, nullable=False, server_default="0"),
    Column("paid_payment_id", Uuid),
    Column("payment_fee", BigInteger, nullable=False, server_default="0"),
    Column("refund_promised", BigInteger, nullable=False, server_default="0"),
    Column("refunded_amount", BigInteger, nullable=False, server_default="0"),
    Column("confirmed_at", DateTime(timezone=True)),
    Column("paid_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("refund_promised <= paid", name="refunds_within_paid"),
    Index("ix_pledge_project_status", "project_id", "status"),
    Index("ix_pledge_customer", "customer_id", "created_at"),
    Index("ix_pledge_merchant", "merchant_id", "created_at"),
    # The sweeps': unconfirmed holds by expiry, charges by due time, fix windows by end.
    Index("ix_pledge_hold_expiry", "hold_expires_at", postgresql_where=text("status = 'pending'")),
    Index(
        "ix_pledge_charge_due",
        "charge_at",
        postgresql_where=text("status IN ('charge_due', 'charging', 'payment_failed')"),
    ),
    Index("ix_pledge_fix_until", "fix_until", postgresql_where=text("status = 'payment_failed'")),
)

pledge_item = Table(
    "pledge_item",
    metadata,
    # The places a pledge holds: its tier (if any) and its add-ons.
    Column("pledge_id", Uuid, ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True),
    Column("reward_id", Uuid, ForeignKey("reward.id"), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("unit_amount", BigInteger, nullable=False),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    Index("ix_pledge_item_reward", "reward_id"),
)

pledge_refund = Table(
    "pledge_refund",
    metadata,
    # One refund decision (a cancellation, a lowered pledge, a failed or cancelled project,
    # a late payment), carried out by a detached job with its own provider key.
    Column("id", Uuid, primary_key=True),
    Column("pledge_id", Uuid, ForeignKey("pledge.id"), nullable=False),
    Column("payment_id", Uuid, nullable=False),
    Column("merchant_id", String(100), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", String(40), nullable=False),
    Column("status", String(8), nullable=False),  # approved | done
    # The settlement statement that deducted it (NULL: the next one will).
    Column("settlement_id", Uuid),
    *_timestamps(),
    CheckConstraint("amount > 0", name="amount_positive"),
    Index("ix_pledge_refund_pledge", "pledge_id"),
    Index(
        "ix_pledge_refund_unsettled",
        "merchant_id",
        postgresql_where=text("settlement_id IS NULL"),
    ),
)

settlement = Table(
    "settlement",
    metadata,
    # A project's statement after its fix window: collected - refunds - platform fee
    # - payment fees = payout, to the fen; refunds of earlier projects not yet deducted
    # are deducted here.
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, ForeignKey("project.id"), nullable=False, unique=True),
    Column("merchant_id", String(100), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("collected", BigInteger, nullable=False),
    Column("refunds", BigInteger, nullable=False),
    Column("platform_fee_bps", Integer, nullable=False),
    Column("platform_fee", BigInteger, nullable=False),
    Column("payment_fees", BigInteger, nullable=False),
    Column("payout", BigInteger, nullable=False),
    Column("pledges_collected", Integer, nullable=False),
    Column("pledges_dropped", Integer, nullable=False),
    # pending | paying | paid | failed | owed (a negative payout: the creator owes it)
    Column("status", String(8), nullable=False),
    # The bank transfer's reference, or the provider's transfer id (``tr_...``).
    Column("external_reference", String(200)),
    # Who paid it (an admin), or started its transfer ("system": at settlement).
    Column("paid_by", String(100)),
    Column("paid_at", DateTime(timezone=True)),
    # The transfer: the connected account paid, the attempt (each has its own provider
    # idempotency key), and why the last one failed.
    Column("payout_account", String(80)),
    Column("payout_attempt", Integer, nullable=False, server_default="0"),
    Column("failure_reason", String(500)),
    # What the provider took back from the transfer that paid it, in part (the creator kept
    # ``payout - reversed_amount``); reversed in full, the statement is ``failed`` instead.
    Column("reversed_amount", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint(
        "payout = collected - refunds - platform_fee - payment_fees", name="payout_reconciles"
    ),
    CheckConstraint(
        "reversed_amount >= 0 AND reversed_amount <= GREATEST(payout, 0)", name="reversed"
    ),
    CheckConstraint(
        "status IN ('pending', 'paying', 'paid', 'failed', 'owed')", name="status_known"
    ),
    CheckConstraint("status <> 'owed' OR payout < 0", name="owed_is_negative"),
    CheckConstraint("status NOT IN ('paying', 'paid') OR payout >= 0", name="paid_not_owed"),
    CheckConstraint(
        f"payout_account IS NULL OR payout_account ~ {PAYOUT_ACCOUNT_SQL}",
        name="payout_account_shape",
    ),
    Index("ix_settlement_merchant", "merchant_id", "created_at"),
)

charge_throttle = Table(
    "charge_throttle",
    metadata,
    # One row per limited thing (the provider's charge endpoint): the next free slot. Every
    # worker takes its slots here, so the rate holds however many workers run.
    Column("name", String(40), primary_key=True),
    Column("next_slot_at", DateTime(timezone=True), nullable=False),
)
