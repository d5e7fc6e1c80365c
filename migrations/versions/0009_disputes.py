"""Disputes (chargebacks) on payments, and refunds held because of them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "payment_id",
            sa.String(40),
            sa.ForeignKey("payments.id", name="fk_disputes_payment_id_payments"),
            nullable=False,
        ),
        sa.Column("pse_account", sa.String(64), nullable=False),
        sa.Column("pse_dispute_id", sa.String(255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        # open | won | lost | closed
        sa.Column("status", sa.String(16), nullable=False),
        # What a lost dispute counts in the payment's disputed_amount.
        sa.Column("counted_amount", sa.BigInteger(), nullable=False, server_default="0"),
        # pse (a webhook) | api (reported by a person or the store)
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_due_by", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_disputes"),
        sa.UniqueConstraint("pse_account", "pse_dispute_id", name="uq_disputes_pse_account"),
    )
    op.create_index("ix_disputes_payment_id", "disputes", ["payment_id"])
    # The attention list: open disputes by their evidence deadline.
    op.create_index(
        "ix_disputes_open",
        "disputes",
        ["evidence_due_by"],
        postgresql_where=sa.text("status = 'open'"),
    )
    op.add_column(
        "payments",
        sa.Column("disputed_amount", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "payments", sa.Column("open_disputes", sa.Integer(), nullable=False, server_default="0")
    )
    # Why a refund is held back from the PSE (payment_disputed), until released.
    op.add_column("refunds", sa.Column("hold", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("refunds", "hold")
    op.drop_column("payments", "open_disputes")
    op.drop_column("payments", "disputed_amount")
    op.drop_index("ix_disputes_open", table_name="disputes")
    op.drop_index("ix_disputes_payment_id", table_name="disputes")
    op.drop_table("disputes")
