"""Event feed order and delivery to the store's webhook

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # On PostgreSQL every event records the id of the transaction that wrote it,
    # so a reader can tell which transactions might still add earlier events.
    tx_default = sa.text("(pg_current_xact_id()::text::bigint)") if postgres else sa.text("0")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tx", sa.BigInteger(), nullable=False, server_default=tx_default)
        )
        batch_op.add_column(
            sa.Column(
                "delivery_status", sa.String(length=16), nullable=False, server_default="none"
            )
        )
        batch_op.add_column(
            sa.Column("delivery_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("next_delivery_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.drop_index("ix_events_refund_id")
        batch_op.create_index("ix_events_refund_order", ["refund_id", "tx", "seq"])
        batch_op.create_index("ix_events_order", ["tx", "seq"])
        batch_op.create_index("ix_events_delivery", ["delivery_status", "next_delivery_at"])

    op.create_table(
        "event_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_deliveries")),
    )
    op.create_index("ix_event_deliveries_event_id", "event_deliveries", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_event_deliveries_event_id", table_name="event_deliveries")
    op.drop_table("event_deliveries")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_delivery")
        batch_op.drop_index("ix_events_order")
        batch_op.drop_index("ix_events_refund_order")
        batch_op.create_index("ix_events_refund_id", ["refund_id"])
        for column in (
            "last_error",
            "delivered_at",
            "first_attempt_at",
            "next_delivery_at",
            "delivery_attempts",
            "delivery_status",
            "tx",
        ):
            batch_op.drop_column(column)
