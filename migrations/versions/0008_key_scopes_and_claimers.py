"""Keys scoped to PSE accounts; worker claims tied to their claimer

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The PSE accounts a key may see and act on; NULL: every account.
    op.add_column("api_keys", sa.Column("accounts", JSONB(), nullable=True))
    # Who holds the lease on a refund's self-check and on an event's delivery:
    # the claimer's session advisory lock key. A claimer whose lock is gone (its
    # connection died with its process) no longer holds anything.
    op.add_column("refunds", sa.Column("claimed_by", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("claimed_by", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_refunds_claimed_by",
        "refunds",
        ["claimed_by"],
        postgresql_where=sa.text("claimed_by IS NOT NULL"),
    )
    op.create_index(
        "ix_events_claimed_by",
        "events",
        ["claimed_by"],
        postgresql_where=sa.text("claimed_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_claimed_by", table_name="events")
    op.drop_index("ix_refunds_claimed_by", table_name="refunds")
    op.drop_column("events", "claimed_by")
    op.drop_column("refunds", "claimed_by")
    op.drop_column("api_keys", "accounts")
