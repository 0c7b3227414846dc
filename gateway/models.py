"""Tables of the gateway's own database: identity (customers, merchants, staff, sessions).

One metadata and one Alembic history (gateway/migrations), like a service's. Only the
repositories of gateway/customers, gateway/staff and gateway/sessions query them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Uuid,
    func,
    text,
)

from shared.db import make_registry

registry = make_registry()
metadata = registry.metadata


def _timestamps() -> list[Column[Any]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


customer = Table(
    "customer",
    metadata,
    # One person: the `sub` of their tokens in every service (String(100) there).
    Column("id", String(100), primary_key=True),
    # WeChat's id of the person across the apps bound to one open-platform account.
    Column("unionid", String(64), unique=True),
    Column("phone", String(32)),
    Column("phone_country_code", String(8)),
    *_timestamps(),
)

wechat_account = Table(
    "wechat_account",
    metadata,
    # A customer as one mini-program knows them: (app id, openid), WeChat's own key.
    Column("app_id", String(32), primary_key=True),
    Column("openid", String(64), primary_key=True),
    Column("customer_id", String(100), ForeignKey("customer.id"), nullable=False),
    Column("unionid", String(64)),
    # WeChat's key for decrypting this user's data; never sent to anyone.
    Column("session_key", String(64), nullable=False),
    Column("last_login_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    *_timestamps(),
    Index("ix_wechat_account_customer", "customer_id"),
)

merchant = Table(
    "merchant",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),  # active | suspended
    Column("contact_name", String(100)),
    Column("contact_email", String(254)),
    Column("contact_phone", String(32)),
    Column("created_by", String(100), nullable=False),
    *_timestamps(),
    CheckConstraint("status IN ('active', 'suspended')", name="status_known"),
    Index("ix_merchant_created", "created_at", "id"),
)

staff = Table(
    "staff",
    metadata,
    # A person who works for one merchant, or a platform admin (no merchant).
    Column("id", String(100), primary_key=True),
    Column("merchant_id", String(100), ForeignKey("merchant.id")),
    # owner | operator | finance | viewer; admin (platform operators, no merchant)
    Column("role", String(16), nullable=False),
    # invited | active | removed
    Column("status", String(16), nullable=False, server_default="invited"),
    Column("name", String(100), nullable=False),
    # Logins, stored lower-cased (email) or as digits with their country code (phone).
    Column("email", String(254)),
    Column("phone", String(32)),
    # Argon2id (argon2-cffi's encoded form); null until the invitation is accepted.
    Column("password_hash", String(255)),
    # SHA-256 of the invitation token (the token itself is shown once, to the inviter).
    Column("invite_hash", String(64), unique=True),
    Column("invite_expires_at", DateTime(timezone=True)),
    Column("invited_by", String(100)),
    Column("removed_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint("(role = 'admin') = (merchant_id IS NULL)", name="admins_have_no_merchant"),
    CheckConstraint("email IS NOT NULL OR phone IS NOT NULL", name="has_login"),
    CheckConstraint("status IN ('invited', 'active', 'removed')", name="status_known"),
    # A login names one person: unique among staff who are not removed.
    Index(
        "uq_staff_email_live",
        "email",
        unique=True,
        postgresql_where=text("status <> 'removed'"),
    ),
    Index(
        "uq_staff_phone_live",
        "phone",
        unique=True,
        postgresql_where=text("status <> 'removed'"),
    ),
    Index("ix_staff_merchant", "merchant_id", "created_at", "id"),
)

session_family = Table(
    "session_family",
    metadata,
    # One login and every refresh token rotated from it.
    Column("id", Uuid, primary_key=True),
    Column("subject", String(100), nullable=False),  # a customer's or staff member's id
    Column("kind", String(16), nullable=False),  # customer | staff
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    # logout | reuse | removed
    Column("revoked_reason", String(16)),
    Index("ix_session_family_subject", "subject", postgresql_where=text("revoked_at IS NULL")),
)

refresh_token = Table(
    "refresh_token",
    metadata,
    # SHA-256 of the token: a stolen table holds nothing that can be presented.
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", Uuid, ForeignKey("session_family.id"), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set when it is exchanged for the next one: presented again, it revokes the family.
    Column("used_at", DateTime(timezone=True)),
    Index("ix_refresh_token_family", "family_id"),
)
