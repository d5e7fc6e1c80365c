"""Indexes for the console's lists and figures

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The refund statuses that are not final, as of this revision. The refunds
# repository names the same list in its queries of open refunds: a partial
# index serves only a query whose condition is written the same way, so a
# status added later must be added here, by a new revision, too.
OPEN_STATUSES = (
    "pending_approval",
    "offline_required",
    "approved",
    "submitting",
    "unknown",
    "pending",
)
_OPEN = "status IN (" + ", ".join(f"'{status}'" for status in OPEN_STATUSES) + ")"


def upgrade() -> None:
    # The approvals inbox pages through the refunds awaiting approval, oldest first.
    op.create_index(
        "ix_refunds_pending_approval",
        "refunds",
        ["id"],
        postgresql_where=sa.text("status = 'pending_approval'"),
    )
    # The stale queue: open refunds by id, a small part of all refunds.
    op.create_index("ix_refunds_open", "refunds", ["id"], postgresql_where=sa.text(_OPEN))
    # Refund search by amount range, within a currency.
    op.create_index("ix_refunds_currency_amount", "refunds", ["currency", "amount"])
    # Time to refund: the `succeeded` entries of a window.
    op.create_index(
        "ix_refund_status_history_succeeded_at",
        "refund_status_history",
        ["at"],
        postgresql_where=sa.text("status = 'succeeded'"),
    )
    # The refund rate: payments registered in a window.
    op.create_index("ix_payments_created_at", "payments", ["created_at"])
    # Failed deliveries to the store, newest first.
    op.create_index(
        "ix_events_failed",
        "events",
        ["id"],
        postgresql_where=sa.text("delivery_status = 'failed'"),
    )
    # A refund's timeline: the PSE webhooks applied to it.
    op.create_index("ix_pse_webhook_events_refund_id", "pse_webhook_events", ["refund_id"])


def downgrade() -> None:
    op.drop_index("ix_pse_webhook_events_refund_id", table_name="pse_webhook_events")
    op.drop_index("ix_events_failed", table_name="events")
    op.drop_index("ix_payments_created_at", table_name="payments")
    op.drop_index("ix_refund_status_history_succeeded_at", table_name="refund_status_history")
    op.drop_index("ix_refunds_currency_amount", table_name="refunds")
    op.drop_index("ix_refunds_open", table_name="refunds")
    op.drop_index("ix_refunds_pending_approval", table_name="refunds")
