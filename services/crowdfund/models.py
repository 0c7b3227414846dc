"""Tables of the crowdfund service's own database."""

from __future__ import annotations

from sqlmodel import SQLModel

from shared.db import make_registry
from shared.payments import define_payment_tables
from shared.tables import define_platform_tables

registry = make_registry()
metadata = registry.metadata
platform = define_platform_tables(metadata)
payments = define_payment_tables(metadata)


class Base(SQLModel, registry=registry):
    """Base of this service's SQLModel tables (its own metadata, its own database)."""
