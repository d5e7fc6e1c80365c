"""Settlement-file parsers: each turns a PSE's report (UTF-8 CSV) into `SettlementRow`s, streaming.

Rows are read one at a time from the open file: memory stays flat however
long the file. A line that cannot be read raises `SettlementFileError`
naming it (line 1 is the header).

Formats:

- `generic`: our documented CSV, header
  `pse_refund_id,reference,type,amount,currency,status,settled_at,fee,settlement_amount,settlement_currency`
  (any order). Rows whose `type` is not `refund` are skipped. `amount`, `fee`
  and `settlement_amount` are integers of minor units; `fee` is in the
  settlement currency (the refund's currency when none is given); `status` is
  succeeded, failed or pending; `settled_at` is RFC 3339.
- `stripe_itemized`: Stripe's "Balance change from activity - itemized" and
  "Payout reconciliation - itemized" exports. Columns read: `reporting_category`
  (`refund` → succeeded, `refund_failure` → failed; other categories are
  skipped), `source_id` (the refund id `re_…`), `gross` and `fee` (major units
  in `currency`, the settlement currency), `customer_facing_amount` /
  `customer_facing_currency` (the refund as the customer saw it, when
  present), `created_utc`, and `refund_metadata[refund_id]` (our reference,
  when the export includes that metadata column).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from app.domain.errors import DomainError
from app.domain.money import CURRENCY_EXPONENTS, Money, is_currency, money
from app.domain.reconciliation import SettledStatus, SettlementRow

GENERIC_COLUMNS = (
    "pse_refund_id",
    "reference",
    "type",
    "amount",
    "currency",
    "status",
    "settled_at",
    "fee",
    "settlement_amount",
    "settlement_currency",
)
STRIPE_REQUIRED = ("reporting_category", "source_id", "gross", "currency")


_KNOWN_CODES = frozenset(CURRENCY_EXPONENTS)


class SettlementFileError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class SettlementFile:
    """An open settlement file: its format and a stream of refund rows."""

    format: str
    rows: Iterator[SettlementRow]


def _decoded(stream: BinaryIO) -> Iterator[str]:
    """The file's lines as text, decoded one by one, so a bad byte names its line."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SettlementFileError(number, "not UTF-8 text") from None
        yield text.lstrip("\ufeff") if number == 1 else text


def open_settlement(stream: BinaryIO, provider: str) -> SettlementFile:
    reader = csv.reader(_decoded(stream))
    try:
        header = next(reader)
    except StopIteration:
        raise SettlementFileError(1, "the file is empty") from None
    except csv.Error as exc:
        raise SettlementFileError(1, f"not CSV: {exc}") from None
    names = [h.strip().lstrip("\ufeff") for h in header]
    if set(GENERIC_COLUMNS) <= set(names):
        return SettlementFile("generic", _generic(reader, names))
    if set(STRIPE_REQUIRED) <= set(names):
        return SettlementFile("stripe_itemized", _stripe(reader, names))
    missing = ", ".join(c for c in GENERIC_COLUMNS if c not in names)
    raise SettlementFileError(
        1,
        f"unknown header: the generic format needs {missing}"
        + (" (or a Stripe itemized export)" if provider == "stripe" else ""),
    )


def _records(reader: Iterator[list[str]], width: int) -> Iterator[tuple[int, list[str]]]:
    line = 1
    try:
        for record in reader:
            line += 1
            if len(record) != width:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                raise SettlementFileError(line, f"{len(record)} fields, the header has {width}")
            yield line, record
    except csv.Error as exc:
        raise SettlementFileError(line + 1, f"not CSV: {exc}") from None


def _currency(line: int, value: str, column: str) -> str:
    if value in _KNOWN_CODES:
        return value
    code = value.strip().upper()
    if not is_currency(code):
        raise SettlementFileError(line, f"{column} {value!r} is not an ISO 4217 currency")
    return code


def _minor(line: int, value: str, column: str) -> int:
    if value.isdigit():
        return int(value)
    text = value.strip()
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        raise SettlementFileError(line, f"{column} {value!r} is not an integer of minor units")
    return int(text)


def _money(line: int, amount: int, currency: str, column: str) -> Money:
    try:
        return money(amount, currency)
    except DomainError as exc:
        raise SettlementFileError(line, f"{column}: {exc.detail}") from None


def _time(line: int, value: str, column: str) -> datetime | None:
    text = value.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise SettlementFileError(line, f"{column} {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Stripe's *_utc columns carry no zone
    return moment.astimezone(UTC)


def _generic(reader: Iterator[list[str]], names: list[str]) -> Iterator[SettlementRow]:
    statuses = {s.value: s for s in SettledStatus}
    (
        i_pse,
        i_ref,
        i_type,
        i_amount,
        i_currency,
        i_status,
        i_settled,
        i_fee,
        i_settlement,
        i_settlement_currency,
    ) = (names.index(column) for column in GENERIC_COLUMNS)
    for line, r in _records(reader, len(names)):
        kind = r[i_type]
        if kind != "refund" and kind.strip().lower() != "refund":
            continue
        pse_id = r[i_pse].strip() or None
        reference = r[i_ref].strip() or None
        if pse_id is None and reference is None:
            raise SettlementFileError(line, "a refund row needs pse_refund_id or reference")
        currency = _currency(line, r[i_currency], "currency")
        amount = _minor(line, r[i_amount], "amount")
        if amount < 1:
            raise SettlementFileError(line, "amount must be a positive number of minor units")
        status = statuses.get(r[i_status]) or statuses.get(r[i_status].strip().lower())
        if status is None:
            raise SettlementFileError(
                line, f"status {r[i_status]!r} is not succeeded, failed or pending"
            )
        settlement_currency = (
            _currency(line, r[i_settlement_currency], "settlement_currency")
            if r[i_settlement_currency]
            else None
        )
        settlement = None
        if r[i_settlement]:
            if settlement_currency is None:
                raise SettlementFileError(line, "settlement_amount needs settlement_currency")
            settlement = _money(
                line,
                _minor(line, r[i_settlement], "settlement_amount"),
                settlement_currency,
                "settlement_amount",
            )
        fee = None
        if r[i_fee]:
            fee = _money(
                line, _minor(line, r[i_fee], "fee"), settlement_currency or currency, "fee"
            )
        yield SettlementRow(
            line,
            pse_id,
            reference,
            _money(line, amount, currency, "amount"),
            status,
            _time(line, r[i_settled], "settled_at"),
            fee,
            settlement,
        )


def _major(line: int, value: str, currency: str, column: str) -> Money:
    try:
        amount = abs(Decimal(value.strip()))
    except InvalidOperation:
        raise SettlementFileError(line, f"{column} {value!r} is not a decimal amount") from None
    try:
        return Money.from_major(amount, currency)
    except DomainError as exc:
        raise SettlementFileError(line, f"{column}: {exc.detail}") from None


def _stripe(reader: Iterator[list[str]], names: list[str]) -> Iterator[SettlementRow]:
    categories = {"refund": SettledStatus.SUCCEEDED, "refund_failure": SettledStatus.FAILED}
    has_customer_amount = "customer_facing_amount" in names and "customer_facing_currency" in names
    reference_column = (
        "refund_metadata[refund_id]" if "refund_metadata[refund_id]" in names else None
    )
    for line, record in _records(reader, len(names)):
        r = dict(zip(names, record, strict=True))
        status = categories.get(r["reporting_category"].strip())
        if status is None:
            continue
        settlement_currency = _currency(line, r["currency"], "currency")
        settled = _major(line, r["gross"], settlement_currency, "gross")
        amount = settled
        if has_customer_amount and r["customer_facing_amount"].strip():
            amount = _major(
                line,
                r["customer_facing_amount"],
                _currency(line, r["customer_facing_currency"], "customer_facing_currency"),
                "customer_facing_amount",
            )
        fee = None
        if "fee" in names and r["fee"].strip():
            fee = _major(line, r["fee"], settlement_currency, "fee")
        pse_id = r["source_id"].strip() or None
        reference = (r[reference_column].strip() or None) if reference_column else None
        if pse_id is None and reference is None:
            raise SettlementFileError(line, "a refund row needs source_id")
        yield SettlementRow(
            line=line,
            pse_refund_id=pse_id,
            reference=reference,
            amount=amount,
            status=status,
            settled_at=_time(line, r.get("created_utc", ""), "created_utc"),
            fee=fee,
            settlement_amount=settled,
        )
