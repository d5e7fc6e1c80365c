"""Settlement-file reconciliation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("pse_account", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("file_format", sa.String(length=32), nullable=True),
        sa.Column("rows_total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("range_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("range_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("adopted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
    )
    op.create_table(
        "reconciliation_rows",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("reconciliation_id", sa.String(length=40), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("pse_refund_id", sa.String(length=255), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("refund_id", sa.String(length=40), nullable=True),
        sa.Column("file_amount", sa.BigInteger(), nullable=True),
        sa.Column("file_status", sa.String(length=16), nullable=True),
        sa.Column("our_amount", sa.BigInteger(), nullable=True),
        sa.Column("our_status", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fee", sa.BigInteger(), nullable=True),
        sa.Column("settlement_amount", sa.BigInteger(), nullable=True),
        sa.Column("settlement_currency", sa.String(length=3), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_rows")),
    )
    op.create_index(
        "ix_reconciliation_rows_outcome",
        "reconciliation_rows",
        ["reconciliation_id", "outcome", "id"],
    )
    op.create_index(
        "ix_reconciliation_rows_refund", "reconciliation_rows", ["reconciliation_id", "refund_id"]
    )
    # The FX report sums by settlement currency over a period.
    op.create_index("ix_refunds_created_at", "refunds", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_refunds_created_at", table_name="refunds")
    op.drop_index("ix_reconciliation_rows_refund", table_name="reconciliation_rows")
    op.drop_index("ix_reconciliation_rows_outcome", table_name="reconciliation_rows")
    op.drop_table("reconciliation_rows")
    op.drop_table("reconciliations")
