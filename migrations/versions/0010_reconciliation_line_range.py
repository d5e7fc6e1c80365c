"""Reconciliation lines found by their run's id range, one partial index

A run's lines take ids from `reconciliation_rows_id_seq` after the run's own
`first_line_id` (the sequence's next value when the run is created), and
`last_line_id` closes the range when the run ends: reading a run's lines is
a range scan of the primary key. Only lines that are not `matched` are kept
in a second index, for the listings of one outcome. A million-line file
wrote three index entries per line before, and each secondary index cost
PostgreSQL about as much CPU as the row itself.

Refunds' pages keep a tenth free (fillfactor 90): an update that changes no
indexed column (a settlement file's fee and settled amount, a retry's
counters) can then stay on its page without touching the table's eleven
indexes (a HOT update). New pages get it; existing ones as they are rewritten.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEXT_LINE_ID = sa.text("nextval('reconciliation_rows_id_seq')")


def upgrade() -> None:
    op.execute("ALTER TABLE refunds SET (fillfactor = 90)")
    op.add_column("reconciliations", sa.Column("first_line_id", sa.BigInteger(), nullable=True))
    op.add_column("reconciliations", sa.Column("last_line_id", sa.BigInteger(), nullable=True))
    # Runs of before: the range of the lines they have (an empty one without
    # lines); one still processing stays open above.
    op.execute(
        "UPDATE reconciliations r SET first_line_id = coalesce(s.first, 0), "
        "last_line_id = CASE WHEN r.status = 'processing' THEN NULL ELSE coalesce(s.last, 0) END "
        "FROM reconciliations r2 LEFT JOIN (SELECT reconciliation_id, min(id) AS first, "
        "max(id) AS last FROM reconciliation_rows GROUP BY reconciliation_id) s "
        "ON s.reconciliation_id = r2.id WHERE r2.id = r.id"
    )
    op.alter_column(
        "reconciliations", "first_line_id", nullable=False, server_default=_NEXT_LINE_ID
    )
    op.drop_index("ix_reconciliation_rows_refund", table_name="reconciliation_rows")
    op.drop_index("ix_reconciliation_rows_outcome", table_name="reconciliation_rows")
    op.create_index(
        "ix_reconciliation_rows_mismatch",
        "reconciliation_rows",
        ["reconciliation_id", "outcome", "id"],
        postgresql_where=sa.text("outcome <> 'matched'"),
    )


def downgrade() -> None:
    op.execute("ALTER TABLE refunds RESET (fillfactor)")
    op.drop_index("ix_reconciliation_rows_mismatch", table_name="reconciliation_rows")
    op.create_index(
        "ix_reconciliation_rows_outcome",
        "reconciliation_rows",
        ["reconciliation_id", "outcome", "id"],
    )
    op.create_index(
        "ix_reconciliation_rows_refund", "reconciliation_rows", ["reconciliation_id", "refund_id"]
    )
    op.drop_column("reconciliations", "last_line_id")
    op.drop_column("reconciliations", "first_line_id")
