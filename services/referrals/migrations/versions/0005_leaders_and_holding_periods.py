"""Pickup-point leaders' commissions (the attribution names the leader, a commission its
payee) and the program's holding period.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 00:16:29.923403
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("referral_program", sa.Column("holding_days", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_referral_program_holding_days_range"),
        "referral_program",
        "holding_days IS NULL OR holding_days BETWEEN 0 AND 365",
    )
    op.add_column("attribution", sa.Column("leader_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_attribution_leader_id_distributor"),
        "attribution",
        "distributor",
        ["leader_id"],
        ["id"],
    )
    op.add_column(
        "commission",
        sa.Column("payee", sa.String(length=12), server_default="distributor", nullable=False),
    )
    op.drop_constraint(
        op.f("uq_commission_source_type_source_id_level"), "commission", type_="unique"
    )
    op.create_unique_constraint(
        op.f("uq_commission_source_type_source_id_payee_level"),
        "commission",
        ["source_type", "source_id", "payee", "level"],
    )
    op.create_check_constraint(
        op.f("ck_commission_leader_one_level"),
        "commission",
        "payee = 'distributor' OR (payee = 'leader' AND level = 1)",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_commission_leader_one_level"), "commission", type_="check")
    # The ledger is never rewritten: with leaders' commissions on it, there is no way back.
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM commission WHERE payee = 'leader') THEN "
        "RAISE EXCEPTION 'leader commissions are on the ledger: cannot downgrade'; "
        "END IF; END $$"
    )
    op.drop_constraint(
        op.f("uq_commission_source_type_source_id_payee_level"), "commission", type_="unique"
    )
    op.create_unique_constraint(
        op.f("uq_commission_source_type_source_id_level"),
        "commission",
        ["source_type", "source_id", "level"],
    )
    op.drop_column("commission", "payee")
    op.drop_constraint(
        op.f("fk_attribution_leader_id_distributor"), "attribution", type_="foreignkey"
    )
    op.drop_column("attribution", "leader_id")
    op.drop_constraint(
        op.f("ck_referral_program_holding_days_range"), "referral_program", type_="check"
    )
    op.drop_column("referral_program", "holding_days")
