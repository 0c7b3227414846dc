"""Tables of the referrals service's own database.

The platform tables come from the shared package; the domain tables of programs,
distributors, attribution, commissions and the ledger are defined here, in one metadata.
Only each domain's ``repository.py`` queries them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlmodel import SQLModel

from shared.db import make_registry
from shared.payments import define_payment_tables
from shared.tables import define_platform_tables

registry = make_registry()
metadata = registry.metadata
platform = define_platform_tables(metadata)
# The payment layer's tables: payouts (Connect transfers) of withdrawals, their provider
# events (webhook inbox) and the simulated provider's state. No payments are taken here.
payments = define_payment_tables(metadata)
# A Stripe connected account id (shared.payments.PAYOUT_ACCOUNT_PATTERN), in SQL.
PAYOUT_ACCOUNT_SQL = "'^acct_[A-Za-z0-9]{6,64}$'"


class Base(SQLModel, registry=registry):
    """Base of this service's SQLModel tables (its own metadata, its own database)."""


def _timestamps() -> list[Column[Any]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


referral_program = Table(
    "referral_program",
    metadata,
    # One program per merchant, with its commission rules (docs/referrals.md).
    Column("merchant_id", String(100), primary_key=True),
    Column("enrollment", String(16), nullable=False),  # open | approval
    Column("attribution", String(16), nullable=False),  # first_touch | last_touch
    Column("binding_days", Integer, nullable=False),
    Column("level1_bps", Integer, nullable=False),
    Column("level2_bps", Integer, nullable=False),
    Column("leader_bps", Integer, nullable=False),
    Column("max_total_bps", Integer, nullable=False),
    Column("currency", String(3), nullable=False, server_default="CNY"),
    Column("min_withdrawal", BigInteger, nullable=False),
    Column("withdrawal_fee", BigInteger, nullable=False),
    # Days after a source's first payment until its commissions become available; NULL:
    # an order's at its completion (the end of its return window), a pledge's after
    # DEFAULT_PLEDGE_HOLDING_DAYS.
    Column("holding_days", Integer),
    *_timestamps(),
    CheckConstraint(
        "holding_days IS NULL OR holding_days BETWEEN 0 AND 365", name="holding_days_range"
    ),
    CheckConstraint(
        "level1_bps >= 0 AND level2_bps >= 0 AND leader_bps >= 0"
        " AND level1_bps + level2_bps + leader_bps <= max_total_bps AND max_total_bps <= 10000",
        name="rates_within_cap",
    ),
)

commission_override = Table(
    "commission_override",
    metadata,
    # Rates for one pre-sale campaign or crowdfunding project, instead of the program's.
    Column("merchant_id", String(100), primary_key=True),
    Column("target_type", String(16), primary_key=True),  # presale | project
    Column("target_id", String(100), primary_key=True),
    Column("level1_bps", Integer, nullable=False),
    Column("level2_bps", Integer, nullable=False),
    Column("leader_bps", Integer, nullable=False),
    Column("updated_by", String(100), nullable=False),
    *_timestamps(),
    CheckConstraint(
        "level1_bps >= 0 AND level2_bps >= 0 AND leader_bps >= 0"
        " AND level1_bps + level2_bps + leader_bps <= 10000",
        name="rates_within_100_percent",
    ),
)

distributor = Table(
    "distributor",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("user_id", String(100), nullable=False),
    # The short code customers give at checkout and links carry.
    Column("code", String(16), nullable=False, unique=True),
    # Who recruited them (set once, at joining: a later distributor can never be an upline
    # of an earlier one, so no loop can form).
    Column("upline_id", Uuid, ForeignKey("distributor.id")),
    Column("status", String(16), nullable=False),  # pending | active | suspended | rejected
    Column("real_name", String(100), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("added_by", String(100)),  # staff who added an employee directly
    Column("decided_by", String(100)),
    Column("kyc_verified_by", String(100)),
    Column("kyc_verified_at", DateTime(timezone=True)),
    # Their Stripe connected account: withdrawals approved while it is set are paid by a
    # transfer to it; without one, staff pay outside and mark them paid.
    Column("payout_account", String(80)),
    Column("payout_account_set_by", String(100)),
    *_timestamps(),
    UniqueConstraint("merchant_id", "user_id"),
    CheckConstraint("upline_id IS NULL OR upline_id <> id", name="not_own_upline"),
    CheckConstraint(
        f"payout_account IS NULL OR payout_account ~ {PAYOUT_ACCOUNT_SQL}",
        name="payout_account_shape",
    ),
    Index("ix_distributor_merchant", "merchant_id", "created_at"),
)

customer_binding = Table(
    "customer_binding",
    metadata,
    # 锁客: which distributor a customer of a merchant is bound to, until when.
    Column("merchant_id", String(100), primary_key=True),
    Column("customer_id", String(100), primary_key=True),
    Column("distributor_id", Uuid, ForeignKey("distributor.id"), nullable=False),
    Column("bound_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

referral_link = Table(
    "referral_link",
    metadata,
    # A distributor's share link: general, or for one campaign, group or project.
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("distributor_id", Uuid, ForeignKey("distributor.id"), nullable=False),
    Column("code", String(16), nullable=False, unique=True),
    Column("target_type", String(16), nullable=False),  # general | presale | group | project
    Column("target_id", String(100)),
    Column("clicks", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    Index("ix_referral_link_distributor", "distributor_id", "created_at"),
)

attribution = Table(
    "attribution",
    metadata,
    # The decision for one paid order (or pledge), made once, at its first paid event: who
    # brought it (level 1) and their upline (level 2), or nobody.
    Column("source_type", String(16), primary_key=True),  # order | pledge
    Column("source_id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("distributor_id", Uuid, ForeignKey("distributor.id")),
    Column("upline_id", Uuid, ForeignKey("distributor.id")),
    # The link whose code the order carried, if any (a link's conversions).
    Column("link_id", Uuid, ForeignKey("referral_link.id")),
    # The pickup-point leader the order was collected from (团长自提), paid next to the chain.
    Column("leader_id", Uuid, ForeignKey("distributor.id")),
    Column("self_referral", Boolean, nullable=False),
    # The highest totals any event about the source has told (events may arrive in any
    # order; totals only grow, so the highest are the newest).
    Column("paid_total", BigInteger, nullable=False),
    Column("refunded_total", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("completed", Boolean, nullable=False),
    # A refund that came after the order completed (its commission was already available):
    # worth a look when it follows the end of the return window closely.
    Column("refunded_after_completion_at", DateTime(timezone=True)),
    *_timestamps(),
    Index("ix_attribution_distributor", "distributor_id"),
    Index("ix_attribution_merchant", "merchant_id", "created_at"),
)

commission = Table(
    "commission",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("source_type", String(16), nullable=False),
    Column("source_id", Uuid, nullable=False),
    Column("merchant_id", String(100), nullable=False),
    Column("distributor_id", Uuid, ForeignKey("distributor.id"), nullable=False),
    Column("level", SmallInteger, nullable=False),  # 1 or 2: never deeper
    # distributor: the seller (level 1) or their upline (level 2); leader: the pickup-point
    # leader of the order (level 1, outside the chain: a leader's upline never earns on it).
    Column("payee", String(12), nullable=False, server_default="distributor"),
    Column("rate_bps", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    # What the ledger holds for it now: floor((paid - refunded) * rate / 10000).
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | available
    *_timestamps(),
    UniqueConstraint("source_type", "source_id", "payee", "level"),
    CheckConstraint("level IN (1, 2)", name="two_levels_at_most"),
    CheckConstraint(
        "payee = 'distributor' OR (payee = 'leader' AND level = 1)", name="leader_one_level"
    ),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    Index("ix_commission_distributor", "distributor_id", "created_at"),
    Index("ix_commission_merchant", "merchant_id", "created_at"),
)

ledger_entry = Table(
    "ledger_entry",
    metadata,
    # One balanced movement: ``amount`` leaves ``debit_account`` and enters
    # ``credit_account`` (debits = credits by construction). Accounts are named
    # ``distributor:<id>:<pending|available|withdrawn|owed>`` and
    # ``merchant:<id>:commission_expense``.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("merchant_id", String(100), nullable=False),
    Column("commission_id", Uuid, ForeignKey("commission.id")),
    Column("source_event", String(255), nullable=False),
    Column("kind", String(16), nullable=False),  # accrue | reverse | release
    Column("debit_account", String(150), nullable=False),
    Column("credit_account", String(150), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("debit_account <> credit_account", name="two_accounts"),
    UniqueConstraint("source_event", "commission_id", "kind", "debit_account"),
    Index("ix_ledger_entry_debit", "debit_account"),
    Index("ix_ledger_entry_credit", "credit_account"),
)

withdrawal = Table(
    "withdrawal",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("merchant_id", String(100), nullable=False),
    Column("distributor_id", Uuid, ForeignKey("distributor.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),  # what the distributor receives
    Column("fee", BigInteger, nullable=False),
    Column("taken_back", BigInteger, nullable=False),  # owed amounts settled by this request
    Column("currency", String(3), nullable=False),
    # requested | approved | paying | paid | rejected | failed (docs/referrals.md)
    Column("status", String(16), nullable=False),
    Column("requested_by", String(100), nullable=False),
    Column("decided_by", String(100)),
    Column("reason", String(500)),
    # The bank or WeChat transfer's reference, or the provider's transfer id (``tr_...``).
    Column("external_reference", String(200)),
    Column("paid_at", DateTime(timezone=True)),
    # The connected account a transfer pays (copied at approval): set, it is ``paying``.
    Column("payout_account", String(80)),
    # What the provider took back from a paid transfer (reversals, in full or in part) and
    # the ledger returned to available; while ``paying``, what it will return when paid.
    Column("reversed_amount", BigInteger, nullable=False, server_default="0"),
    *_timestamps(),
    CheckConstraint("amount > 0 AND fee >= 0 AND taken_back >= 0", name="amounts"),
    CheckConstraint("reversed_amount >= 0 AND reversed_amount <= amount", name="reversed"),
    CheckConstraint(
        "status IN ('requested', 'approved', 'paying', 'paid', 'rejected', 'failed')",
        name="status_known",
    ),
    CheckConstraint(
        f"payout_account IS NULL OR payout_account ~ {PAYOUT_ACCOUNT_SQL}",
        name="payout_account_shape",
    ),
    Index("ix_withdrawal_distributor", "distributor_id", "created_at"),
    Index("ix_withdrawal_merchant", "merchant_id", "created_at"),
)
