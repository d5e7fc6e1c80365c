"""The schema, as SQLAlchemy Core tables: what Alembic migrates from.

Migrations create the schema; nothing else does, and the repositories write
plain SQL against it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


# Every instant is a timestamptz, read back as aware UTC.
UtcDateTime = DateTime(timezone=True)
Json = JSONB()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("roles", Json, nullable=False),
    Column("approval_level", Integer, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    # The PSE accounts the key may see and act on; NULL: every account.
    Column("accounts", Json, nullable=True),
)

payments = Table(
    "payments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("pse_account", String(64), nullable=False),
    Column("pse_payment_id", String(255), nullable=False),
    Column("order_id", String(255), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("captured_at", UtcDateTime, nullable=False),
    Column("payment_method", String(64), nullable=True),
    Column("risk_level", String(16), nullable=False),
    Column("settlement_currency", String(3), nullable=False),
    Column("settlement_rate", String(40), nullable=False),
    Column("refunded_amount", BigInteger, nullable=False, default=0),
    Column("reserved_amount", BigInteger, nullable=False, default=0),
    # Migration 0009: lost disputes count like refunds; open ones block refunds.
    Column("disputed_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("open_disputes", Integer, nullable=False, server_default=text("0")),
    Column("created_by", String(40), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("pse_account", "pse_payment_id", name="uq_payments_pse"),
    Index("ix_payments_order_id", "order_id"),
    Index("ix_payments_created_at", "created_at"),
)

# Its pages keep a tenth free (fillfactor 90, set by migration 0010): an
# update of no indexed column stays on its page (HOT) and leaves the indexes be.
refunds = Table(
    "refunds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("payment_id", String(40), ForeignKey("payments.id"), nullable=False),
    Column("pse_account", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(32), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("note", Text, nullable=True),
    Column("metadata", Json, nullable=False),
    Column("required_approvals", Json, nullable=False),
    Column("offline", Boolean, nullable=False, default=False),
    Column("offline_reason", String(64), nullable=True),
    Column("auto_approved", Boolean, nullable=False, default=False),
    Column("created_by", String(40), nullable=False),
    Column("pse_refund_id", String(255), nullable=True),
    Column("failure_code", String(128), nullable=True),
    Column("failure_message", Text, nullable=True),
    Column("settlement_amount", BigInteger, nullable=True),
    Column("settlement_currency", String(3), nullable=True),
    Column("fx_difference", BigInteger, nullable=True),
    Column("fee_amount", BigInteger, nullable=True),
    Column("offline_reference", String(255), nullable=True),
    Column("offline_paid_at", UtcDateTime, nullable=True),
    Column("submit_attempts", Integer, nullable=False, default=0),
    Column("resolve_attempts", Integer, nullable=False, default=0),
    Column("next_check_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Why the refund last raised `refund.needs_attention`, until ops acknowledge it.
    Column("attention", Text, nullable=True),
    Column("attention_at", UtcDateTime, nullable=True),
    # The session advisory lock key of the worker holding the self-check lease.
    Column("claimed_by", BigInteger, nullable=True),
    # Why the refund is held back from the PSE (payment_disputed), until released.
    Column("hold", String(32), nullable=True),
    Index("ix_refunds_payment_id", "payment_id"),
    Index("ix_refunds_status", "status"),
    Index("ix_refunds_pse", "pse_account", "pse_refund_id"),
    Index("ix_refunds_next_check_at", "next_check_at"),
    Index("ix_refunds_created_at", "created_at"),
    Index("ix_refunds_claimed_by", "claimed_by", postgresql_where=text("claimed_by IS NOT NULL")),
    Index(
        "ix_refunds_attention_at",
        "attention_at",
        postgresql_where=text("attention IS NOT NULL"),
    ),
    # Migration 0007: the console's lists.
    Index(
        "ix_refunds_pending_approval", "id", postgresql_where=text("status = 'pending_approval'")
    ),
    Index(
        "ix_refunds_open",
        "id",
        postgresql_where=text(
            "status IN ('pending_approval', 'offline_required', 'approved', 'submitting', "
            "'unknown', 'pending')"
        ),
    ),
    Index("ix_refunds_currency_amount", "currency", "amount"),
)

refund_approvals = Table(
    "refund_approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("refund_id", String(40), ForeignKey("refunds.id"), nullable=False),
    Column("approver_id", String(40), nullable=False),
    Column("approver", String(200), nullable=False),
    Column("level", Integer, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("note", Text, nullable=True),
    Column("at", UtcDateTime, nullable=False),
    UniqueConstraint("refund_id", "approver_id", name="uq_refund_approvals_refund_approver"),
)

refund_status_history = Table(
    "refund_status_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("refund_id", String(40), ForeignKey("refunds.id"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_refund_status_history_refund_id", "refund_id"),
    Index(
        "ix_refund_status_history_succeeded_at",
        "at",
        postgresql_where=text("status = 'succeeded'"),
    ),
)

# Transactional outbox: written in the transaction of the change it reports.
# `tx` is the writing transaction's id (the default of migration 0002):
# readers paging forward only show events of transactions older than every
# one still running, so no page has a gap.
events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column(
        "tx",
        BigInteger,
        nullable=False,
        server_default=text("(pg_current_xact_id()::text::bigint)"),
    ),
    Column("type", String(64), nullable=False),
    Column("refund_id", String(40), nullable=True),
    Column("payment_id", String(40), nullable=True),
    Column("detail", Text, nullable=True),
    Column("data", Json, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Delivery to the store's webhook: none (no URL) | pending | delivered | failed
    Column("delivery_status", String(16), nullable=False),
    Column("delivery_attempts", Integer, nullable=False, default=0),
    Column("next_delivery_at", UtcDateTime, nullable=True),
    Column("first_attempt_at", UtcDateTime, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    # The session advisory lock key of the worker holding the delivery lease.
    Column("claimed_by", BigInteger, nullable=True),
    Index("ix_events_refund_order", "refund_id", "tx", "seq"),
    Index("ix_events_order", "tx", "seq"),
    Index("ix_events_type", "type"),
    Index("ix_events_delivery", "delivery_status", "next_delivery_at"),
    Index("ix_events_failed", "id", postgresql_where=text("delivery_status = 'failed'")),
    Index("ix_events_claimed_by", "claimed_by", postgresql_where=text("claimed_by IS NOT NULL")),
)

event_deliveries = Table(
    "event_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("url", String(2000), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_event_deliveries_event_id", "event_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("api_key_id", String(40), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # started | completed
    Column("response_status", Integer, nullable=True),
    Column("response_body", LargeBinary, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("locked_at", UtcDateTime, nullable=True),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

pse_webhook_events = Table(
    "pse_webhook_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pse_account", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("pse_refund_id", String(255), nullable=True),
    Column("reference", String(255), nullable=True),
    Column("refund", Json, nullable=True),  # the translated PSE view, to apply later
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),  # received|applied|unmatched|ignored|conflict
    Column("refund_id", String(40), nullable=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("applied_at", UtcDateTime, nullable=True),
    UniqueConstraint("pse_account", "event_id", name="uq_pse_webhook_events_account_event"),
    Index("ix_pse_webhook_events_status", "pse_account", "status"),
    Index("ix_pse_webhook_events_refund_id", "refund_id"),
)

auto_approval_totals = Table(
    "auto_approval_totals",
    metadata,
    Column("currency", String(3), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("amount", BigInteger, nullable=False, default=0),
)

reconciliations = Table(
    "reconciliations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("pse_account", String(64), nullable=False),
    Column("filename", String(500), nullable=True),
    Column("status", String(16), nullable=False),  # processing | completed | failed
    Column("file_format", String(32), nullable=True),
    Column("rows_total", Integer, nullable=False, default=0),
    Column("counts", Json, nullable=False),
    Column("range_from", UtcDateTime, nullable=True),
    Column("range_to", UtcDateTime, nullable=True),
    Column("adopted", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("created_by", String(40), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    # The run's lines have ids above `first_line_id` (the sequence's next
    # value when the run is created) and up to `last_line_id`, set when it
    # ends (null while it runs): its lines are a range of the primary key.
    Column(
        "first_line_id",
        BigInteger,
        nullable=False,
        server_default=text("nextval('reconciliation_rows_id_seq')"),
    ),
    Column("last_line_id", BigInteger, nullable=True),
)

reconciliation_rows = Table(
    "reconciliation_rows",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("reconciliation_id", String(40), nullable=False),
    Column("line", Integer, nullable=True),  # null for missing_in_file rows
    Column("outcome", String(32), nullable=False),
    Column("pse_refund_id", String(255), nullable=True),
    Column("reference", String(255), nullable=True),
    Column("refund_id", String(40), nullable=True),
    Column("file_amount", BigInteger, nullable=True),
    Column("file_status", String(16), nullable=True),
    Column("our_amount", BigInteger, nullable=True),
    Column("our_status", String(32), nullable=True),
    Column("currency", String(3), nullable=True),
    Column("settled_at", UtcDateTime, nullable=True),
    Column("fee", BigInteger, nullable=True),
    Column("settlement_amount", BigInteger, nullable=True),
    Column("settlement_currency", String(3), nullable=True),
    Column("detail", Text, nullable=True),
    # A run's lines are read by their id range (`reconciliations.first_line_id`);
    # the listings of one outcome other than `matched` use this index.
    Index(
        "ix_reconciliation_rows_mismatch",
        "reconciliation_id",
        "outcome",
        "id",
        postgresql_where=text("outcome <> 'matched'"),
    ),
)

# The audit trail: append-only (triggers refuse UPDATE, DELETE and TRUNCATE,
# except inside `pse-refunds audit purge`), hash-chained by `seq`.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("refund_id", String(40), nullable=True),
    Column("payment_id", String(40), nullable=True),
    Column("actor", String(200), nullable=True),
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_refund_id", "refund_id", "seq"),
    Index("ix_audit_log_payment_id", "payment_id", "seq"),
    Index("ix_audit_log_request_id", "request_id"),
    Index("ix_audit_log_at", "at"),
)

# The chain's head (one row), and where it starts after a purge.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_hash", String(64), nullable=False),
    Column("purged_at", UtcDateTime, nullable=True),
)

# Console sessions: the hash of the cookie's token, never the token.
# Disputes (chargebacks) on payments, from PSE webhooks or reported through the API.
disputes = Table(
    "disputes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("payment_id", String(40), ForeignKey("payments.id"), nullable=False),
    Column("pse_account", String(64), nullable=False),
    Column("pse_dispute_id", String(255), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", Text, nullable=True),
    Column("status", String(16), nullable=False),  # open | won | lost | closed
    Column("counted_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("source", String(16), nullable=False),  # pse | api
    Column("opened_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime, nullable=True),
    Column("evidence_due_by", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("pse_account", "pse_dispute_id", name="uq_disputes_pse_account"),
    Index("ix_disputes_payment_id", "payment_id"),
    Index("ix_disputes_open", "evidence_due_by", postgresql_where=text("status = 'open'")),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "api_key_id",
        String(40),
        ForeignKey("api_keys.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("flashes", Json, nullable=True),  # messages for the next page
    Index("ix_console_sessions_api_key_id", "api_key_id"),
)
