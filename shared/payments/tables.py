"""The payment tables, made in each payment-taking service's own metadata (and database).

- ``payment``: one row per attempt (one provider PaymentIntent), with the provider's ids,
  amounts in minor units, the current status and the failure shown to the customer.
- ``payment_status_change``: the status history (who moved it: api, webhook, reconcile).
- ``refund``: each refund with its amount and status.
- ``payment_customer``: the provider customer of each user; ``payment_setup``: saved
  payment methods (SetupIntents) for off-session charges.
- ``payment_webhook_inbox``: every provider event received, keyed by (provider, event id),
  so that a redelivery has no effect.
- ``simulated_*``: the simulated provider's own state (its "Stripe account"), kept in the
  same database so that it survives restarts and is shared by every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)

from shared.tables import JSON_TYPE

__all__ = ["PaymentTables", "define_payment_tables"]


@dataclass(frozen=True)
class PaymentTables:
    payment: Table
    payment_status_change: Table
    refund: Table
    payment_customer: Table
    payment_setup: Table
    payment_webhook_inbox: Table
    simulated_object: Table
    simulated_event: Table
    simulated_request: Table


def _timestamps() -> list[Column[Any]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def define_payment_tables(metadata: MetaData) -> PaymentTables:
    payment = Table(
        "payment",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("provider", String(20), nullable=False),
        Column("provider_payment_id", String(255)),
        Column("provider_charge_id", String(255)),
        # The business object paid for ("order:..." or "pledge:..."), and who is involved.
        Column("reference", String(200), nullable=False),
        Column("merchant_id", String(100), nullable=False),
        Column("customer_id", String(100), nullable=False),
        Column("method", String(20), nullable=False),
        Column("capture_method", String(20), nullable=False),
        Column("off_session", Boolean, nullable=False, server_default=text("false")),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("amount_captured", BigInteger, nullable=False, server_default="0"),
        Column("amount_refunded", BigInteger, nullable=False, server_default="0"),
        Column("status", String(32), nullable=False),
        Column("failure_code", String(100)),
        Column("failure_message", Text),
        Column("next_action", JSON_TYPE),
        Column("client_secret", String(255)),
        Column("payment_method_id", String(255)),
        Column("dispute_id", String(255)),
        Column("dispute_status", String(32)),
        Column("dispute_amount", BigInteger),
        # ``created`` of the newest provider event applied: older events are stale.
        Column("provider_event_at", DateTime(timezone=True)),
        *_timestamps(),
        UniqueConstraint("provider", "provider_payment_id"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "amount_captured >= 0 AND amount_captured <= amount", name="captured_in_range"
        ),
        CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_captured",
            name="refunded_in_range",
        ),
        Index("ix_payment_reference", "reference"),
        Index("ix_payment_created_at", "created_at"),
        Index("ix_payment_provider_charge_id", "provider", "provider_charge_id"),
    )
    status_change = Table(
        "payment_status_change",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("payment_id", Uuid, ForeignKey("payment.id"), nullable=False),
        Column("from_status", String(32)),
        Column("to_status", String(32), nullable=False),
        Column("source", String(20), nullable=False),
        Column("event_id", String(255)),
        Column("failure_code", String(100)),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_payment_status_change_payment_id", "payment_id", "id"),
    )
    refund = Table(
        "refund",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("payment_id", Uuid, ForeignKey("payment.id"), nullable=False),
        Column("provider_refund_id", String(255)),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("status", String(20), nullable=False),
        Column("reason", String(50)),
        Column("failure_reason", String(100)),
        # Who asked: a user id, or "provider" for a refund made outside the platform.
        Column("requested_by", String(100), nullable=False),
        *_timestamps(),
        UniqueConstraint("provider_refund_id"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_refund_payment_id", "payment_id"),
    )
    customer = Table(
        "payment_customer",
        metadata,
        Column("provider", String(20), nullable=False),
        Column("user_id", String(100), nullable=False),
        Column("provider_customer_id", String(255), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("provider", "user_id"),
    )
    setup = Table(
        "payment_setup",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("provider", String(20), nullable=False),
        Column("provider_setup_id", String(255), nullable=False),
        Column("customer_id", String(100), nullable=False),
        Column("provider_customer_id", String(255), nullable=False),
        Column("status", String(32), nullable=False),
        Column("payment_method_id", String(255)),
        Column("failure_code", String(100)),
        Column("failure_message", Text),
        Column("next_action", JSON_TYPE),
        Column("client_secret", String(255)),
        *_timestamps(),
        UniqueConstraint("provider", "provider_setup_id"),
        Index("ix_payment_setup_customer_id", "customer_id"),
    )
    inbox = Table(
        "payment_webhook_inbox",
        metadata,
        Column("provider", String(20), nullable=False),
        Column("event_id", String(255), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("object_id", String(255)),
        # applied | ignored | unknown_object | stale
        Column("outcome", String(20), nullable=False),
        Column("event_created_at", DateTime(timezone=True), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("payload", JSON_TYPE, nullable=False),
        PrimaryKeyConstraint("provider", "event_id"),
        Index("ix_payment_webhook_inbox_received_at", "received_at"),
    )
    sim_object = Table(
        "simulated_object",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("type", String(32), nullable=False),
        # The PaymentIntent a charge, refund or dispute belongs to.
        Column("parent_id", String(64)),
        Column("data", JSON_TYPE, nullable=False),
        # When a pending outcome (processing, dispute) is due.
        Column("settle_at", DateTime(timezone=True)),
        *_timestamps(),
        Index("ix_simulated_object_parent_id", "parent_id"),
        Index(
            "ix_simulated_object_settle_at",
            "settle_at",
            postgresql_where=text("settle_at IS NOT NULL"),
        ),
    )
    sim_event = Table(
        "simulated_event",
        metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False),
        Column("type", String(100), nullable=False),
        Column("body", Text, nullable=False),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column(
            "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()
        ),
        Column("delivered_at", DateTime(timezone=True)),
        Column("last_error", Text),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        UniqueConstraint("id"),
        Index(
            "ix_simulated_event_due",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )
    sim_request = Table(
        "simulated_request",
        metadata,
        Column("idempotency_key", String(255), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("response", JSON_TYPE, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    return PaymentTables(
        payment=payment,
        payment_status_change=status_change,
        refund=refund,
        payment_customer=customer,
        payment_setup=setup,
        payment_webhook_inbox=inbox,
        simulated_object=sim_object,
        simulated_event=sim_event,
        simulated_request=sim_request,
    )
