"""Refunds as CSV for a spreadsheet: the console's export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from app.domain.money import Money
from app.domain.records import RefundRow
from app.services.views import rfc3339

CSV_HEADER = (
    "id",
    "created_at",
    "payment_id",
    "order_id",
    "pse_account",
    "amount",
    "currency",
    "status",
    "reason",
    "pse_refund_id",
    "failure_code",
    "updated_at",
)
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str | None) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula
    gets a leading apostrophe (OWASP's advice against CSV injection)."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_row(row: RefundRow) -> list[str]:
    """One refund as export cells: amounts in major units of the row's currency
    (JPY 12000, USD 15.00, KWD 1.500), times in RFC 3339 UTC."""
    return [
        csv_cell(row.id),
        rfc3339(row.created_at) or "",
        csv_cell(row.payment_id),
        csv_cell(row.order_id),
        csv_cell(row.pse_account),
        str(Money(row.amount, row.currency).to_major()),
        csv_cell(row.currency),
        csv_cell(row.status),
        csv_cell(row.reason),
        csv_cell(row.pse_refund_id),
        csv_cell(row.failure_code),
        rfc3339(row.updated_at) or "",
    ]


def csv_lines(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
