"""Partial transfer reversals: what the provider took back from a statement's transfer.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "settlement",
        sa.Column("reversed_amount", sa.BigInteger(), server_default="0", nullable=False),
    )
    # Rows failed earlier by a transfer reversed in full: all of it was taken back.
    op.execute(
        "UPDATE settlement SET reversed_amount = GREATEST(payout, 0)"
        " WHERE status = 'failed' AND failure_reason LIKE 'transfer_reversed:%'"
    )
    op.create_check_constraint(
        op.f("ck_settlement_reversed"),
        "settlement",
        "reversed_amount >= 0 AND reversed_amount <= GREATEST(payout, 0)",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_settlement_reversed"), "settlement", type_="check")
    op.drop_column("settlement", "reversed_amount")
