"""Tables every service has in its own database: outbox, inbox and idempotency keys.

They are SQLAlchemy Core tables made per service metadata (each service owns its database
and its migrations), so the shared code can query them without knowing the service.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
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
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["JSON_TYPE", "PlatformTables", "define_platform_tables"]

# JSONB on PostgreSQL (every environment runs it); plain JSON keeps the metadata portable.
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


@dataclass(frozen=True)
class PlatformTables:
    outbox: Table
    inbox: Table
    idempotency_key: Table
    scheduled_job: Table


def define_platform_tables(metadata: MetaData) -> PlatformTables:
    outbox = Table(
        "outbox",
        metadata,
        # One row per (event, subscriber): each subscriber is retried on its own.
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", Uuid, nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("subscriber", String(100), nullable=False),
        Column("envelope", JSON_TYPE, nullable=False),
        Column("status", String(16), nullable=False, server_default="pending"),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column(
            "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()
        ),
        Column("last_error", Text),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("delivered_at", DateTime(timezone=True)),
        UniqueConstraint("event_id", "subscriber"),
        Index(
            "ix_outbox_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("source", String(100), nullable=False),
        Column("event_id", String(255), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("source", "event_id"),
    )
    idempotency_key = Table(
        "idempotency_key",
        metadata,
        Column("scope", String(255), nullable=False),
        Column("key", String(255), nullable=False),
        Column("method", String(10), nullable=False),
        Column("path", Text, nullable=False),
        Column("request_hash", String(64), nullable=False),
        Column("status", String(16), nullable=False, server_default="started"),
        # The request holding the key (see shared/idempotency.py): only it may finish it.
        Column("owner", String(32)),
        Column("response_status", Integer),
        Column("response_headers", JSON_TYPE),
        Column("response_body", LargeBinary),
        Column("locked_until", DateTime(timezone=True), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("scope", "key"),
        Index("ix_idempotency_key_expires_at", "expires_at"),
    )
    scheduled_job = Table(
        "scheduled_job",
        metadata,
        # Work a domain wants done at a time (shared/scheduler.py), once per (kind, key).
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("kind", String(100), nullable=False),
        Column("key", String(255), nullable=False),
        Column("run_at", DateTime(timezone=True), nullable=False),
        Column("payload", JSON_TYPE, nullable=False),
        # pending | done | dead | cancelled
        Column("status", String(16), nullable=False, server_default="pending"),
        Column("attempts", Integer, nullable=False, server_default="0"),
        # A worker's claim: others leave the job alone until then (a dead worker's lapses).
        Column("locked_until", DateTime(timezone=True)),
        Column("last_error", Text),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("finished_at", DateTime(timezone=True)),
        UniqueConstraint("kind", "key"),
        Index("ix_scheduled_job_due", "run_at", postgresql_where=text("status = 'pending'")),
    )
    return PlatformTables(
        outbox=outbox,
        inbox=inbox,
        idempotency_key=idempotency_key,
        scheduled_job=scheduled_job,
    )
