"""A refund remembers that it needs a person

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("refunds", sa.Column("attention", sa.Text(), nullable=True))
    op.add_column("refunds", sa.Column("attention_at", sa.DateTime(timezone=True), nullable=True))
    # The attention list reads only flagged refunds: a small partial index.
    op.create_index(
        "ix_refunds_attention_at",
        "refunds",
        ["attention_at"],
        postgresql_where=sa.text("attention IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_refunds_attention_at", table_name="refunds")
    op.drop_column("refunds", "attention_at")
    op.drop_column("refunds", "attention")
