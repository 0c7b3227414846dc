"""Partial transfer reversals: what the provider took back from a withdrawal's transfer.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:30:00.000000
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
        "withdrawal",
        sa.Column("reversed_amount", sa.BigInteger(), server_default="0", nullable=False),
    )
    # Rows failed earlier by a transfer reversed in full: all of it was taken back.
    op.execute(
        "UPDATE withdrawal SET reversed_amount = amount"
        " WHERE status = 'failed' AND reason LIKE 'transfer_reversed:%'"
    )
    op.create_check_constraint(
        op.f("ck_withdrawal_reversed"),
        "withdrawal",
        "reversed_amount >= 0 AND reversed_amount <= amount",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_withdrawal_reversed"), "withdrawal", type_="check")
    op.drop_column("withdrawal", "reversed_amount")
