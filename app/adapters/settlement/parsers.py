"""Settlement-file parsers: each turns a PSE's report (UTF-8 CSV) into `SettlementRow`s, streaming.

Rows are read one at a time from the open file: memory stays flat however
long the file. A line that cannot be read raises `SettlementFileError`
naming it (line 1 is the header).

Formats:

- `generic`: our documented CSV, header
  `pse_refund_id,reference,type,amount,currency,status,settled_at,fee,settlement_amount,settlement_currency`
  (any order), and two optional columns for dispute rows, `pse_dispute_id`
  and `pse_payment_id`. Rows whose `type` is `refund` are refunds; `dispute`
  (the PSE took a disputed amount back) and `dispute_reversal` (it gave it
  back) are dispute rows; other rows are skipped. `amount`, `fee` and
  `settlement_amount` are integers of minor units; `fee` is in the settlement
  currency (the row's currency when none is given); `status` is succeeded,
  failed or pending (not read on dispute rows); `settled_at` is RFC 3339. A
  dispute row names its dispute in `pse_dispute_id` (or, without that
  column, in `pse_refund_id`) and/or its payment in `pse_payment_id`; its
  amount may be written negative (a debit).
- `stripe_itemized`: Stripe's "Balance change from activity - itemized" and
  "Payout reconciliation - itemized" exports. Columns read: `reporting_category`
  (`refund` → succeeded, `refund_failure` → failed, `dispute` → a dispute
  withdrawal, `dispute_reversal` → its reinstatement; other categories are
  skipped), `source_id` (the refund id `re_…`, or the dispute id `du_…`/`dp_…`),
  `gross` and `fee` (major units in `currency`, the settlement currency),
  `customer_facing_amount` / `customer_facing_currency` (the refund or the
  dispute as the customer saw it, when present), `created_utc`,
  `refund_metadata[refund_id]` (our reference, when the export includes that
  metadata column), and for dispute rows `charge_id` / `payment_intent_id`
  (the disputed payment, when the export includes them).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from app.domain.errors import DomainError
from app.domain.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    MIN_MINOR_UNITS,
    Money,
    is_currency,
    money,
)
from app.domain.reconciliation import SettledStatus, SettlementRow
from app.domain.reconciliation_disputes import DisputeMovement, SettledDispute
from app.domain.text import is_ascii_digits
from app.domain.times import RANGE, in_utc

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
GENERIC_DISPUTE_COLUMNS = ("pse_dispute_id", "pse_payment_id")
STRIPE_REQUIRED = ("reporting_category", "source_id", "gross", "currency")
# Stripe's columns naming a disputed payment, as our payments may be registered.
STRIPE_PAYMENT_COLUMNS = ("charge_id", "payment_intent_id")
# A dispute row's type (generic) or reporting category (Stripe).
DISPUTE_KINDS = {
    "dispute": DisputeMovement.WITHDRAWN,
    "dispute_reversal": DisputeMovement.REINSTATED,
}


_KNOWN_CODES = frozenset(CURRENCY_EXPONENTS)
# Digits of the largest 64-bit amount.
_MAX_DIGITS = len(str(MAX_MINOR_UNITS))


class SettlementFileError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class SettlementFile:
    """An open settlement file: its format and a stream of its refund rows
    and dispute rows, in file order."""

    format: str
    rows: Iterator[SettlementRow | SettledDispute]


# Bytes of whole lines decoded at a time.
_BLOCK = 1 << 20


def _decoded(stream: BinaryIO) -> Iterator[str]:
    """The file's lines as text, a block of lines decoded at a time. A block
    holding a bad byte is decoded line by line, so the error names its line
    and comes where it would for lines decoded one by one."""
    return itertools.chain.from_iterable(_blocks(stream))


def _blocks(stream: BinaryIO) -> Iterator[Iterable[str]]:
    number = 0
    while raw := stream.readlines(_BLOCK):
        try:
            text = b"".join(raw).decode("utf-8")
        except UnicodeDecodeError:
            yield _one_by_one(raw, number)
        else:
            # Split at "\n" only, as the bytes were.
            yield io.StringIO(text.lstrip("\ufeff") if number == 0 else text, newline="\n")
        number += len(raw)


def _one_by_one(raw: list[bytes], before: int) -> Iterator[str]:
    for number, line in enumerate(raw, start=before + 1):
        try:
            text = line.decode("utf-8")
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
    """An integer of minor units in ASCII digits, maybe negative; one too long
    for 64 bits is given as one past the range, for the caller's range check."""
    text = value.strip()
    digits = text[1:] if text[:1] == "-" else text
    if not is_ascii_digits(digits):
        raise SettlementFileError(line, f"{column} {value!r} is not an integer of minor units")
    if len(digits) > _MAX_DIGITS and len(digits.lstrip("0")) > _MAX_DIGITS:
        # int() would refuse 4,300 digits or more; any of these is out of range.
        return MIN_MINOR_UNITS - 1 if text[0] == "-" else MAX_MINOR_UNITS + 1
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
        moment = datetime.fromisoformat(text)  # "T", "t" or a space between
    except ValueError:
        raise SettlementFileError(line, f"{column} {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Stripe's *_utc columns carry no zone
    found = in_utc(moment)
    if found is None:
        raise SettlementFileError(line, f"{column} {value!r} is not a time {RANGE}")
    return found


def _generic(
    reader: Iterator[list[str]], names: list[str]
) -> Iterator[SettlementRow | SettledDispute]:
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
    i_dispute, i_payment = (
        names.index(column) if column in names else None for column in GENERIC_DISPUTE_COLUMNS
    )
    width = len(names)
    known = _KNOWN_CODES
    least, most = MIN_MINOR_UNITS, MAX_MINOR_UNITS
    from_iso = datetime.fromisoformat
    line = 1
    try:
        # `_records`, inlined: this loop runs once per line of a large file.
        for r in reader:
            line += 1
            if len(r) != width:
                if not r or (len(r) == 1 and not r[0].strip()):
                    continue
                raise SettlementFileError(line, f"{len(r)} fields, the header has {width}")
            kind = r[i_type]
            if kind != "refund":
                kind = kind.strip().lower()
                if kind != "refund":
                    movement = DISPUTE_KINDS.get(kind)
                    if movement is not None:
                        yield _generic_dispute(
                            line,
                            r,
                            movement,
                            names,
                            i_dispute if i_dispute is not None else i_pse,
                            i_payment,
                        )
                    continue
            pse_id = r[i_pse].strip() or None
            reference = r[i_ref].strip() or None
            if pse_id is None and reference is None:
                raise SettlementFileError(line, "a refund row needs pse_refund_id or reference")
            currency = r[i_currency]
            if currency not in known:
                currency = _currency(line, currency, "currency")
            text = r[i_amount]
            # The common case inline: up to 18 ASCII digits, read as they are.
            amount = (
                int(text)
                if text.isdigit() and text.isascii() and len(text) < 19
                else _minor(line, text, "amount")
            )
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
            if text := r[i_settlement]:
                if settlement_currency is None:
                    raise SettlementFileError(line, "settlement_amount needs settlement_currency")
                settlement = _minor(line, text, "settlement_amount")
                if not least <= settlement <= most:
                    _money(line, settlement, settlement_currency, "settlement_amount")  # raises
            fee = None
            if text := r[i_fee]:
                fee = (
                    int(text)
                    if text.isdigit() and text.isascii() and len(text) < 19
                    else _minor(line, text, "fee")
                )
                if not least <= fee <= most:
                    _money(line, fee, settlement_currency or currency, "fee")  # raises
            if amount > most:
                _money(line, amount, currency, "amount")  # raises
            text = r[i_settled].strip()
            settled_at = None
            if text:
                try:
                    # "T", "t" or a space between date and time, as RFC 3339 has them.
                    settled_at = from_iso(text)
                except ValueError:
                    raise SettlementFileError(
                        line, f"settled_at {r[i_settled]!r} is not an RFC 3339 time"
                    ) from None
                settled_at = in_utc(
                    settled_at.replace(tzinfo=UTC) if settled_at.tzinfo is None else settled_at
                )
                if settled_at is None:
                    raise SettlementFileError(
                        line, f"settled_at {r[i_settled]!r} is not a time {RANGE}"
                    )
            # The amounts are in Money's range and their currencies known codes:
            # Money would take them, and is not built for each line.
            yield SettlementRow(
                line,
                pse_id,
                reference,
                amount,
                currency,
                status,
                settled_at,
                fee,
                settlement,
                settlement_currency,
            )
    except csv.Error as exc:
        raise SettlementFileError(line + 1, f"not CSV: {exc}") from None


def _generic_dispute(
    line: int,
    r: list[str],
    movement: DisputeMovement,
    names: list[str],
    i_dispute: int,
    i_payment: int | None,
) -> SettledDispute:
    """A `dispute` / `dispute_reversal` row of the generic format (rare: read
    by name, off the refund rows' path)."""
    value = dict(zip(names, r, strict=True))
    pse_dispute_id = r[i_dispute].strip() or None
    payment = r[i_payment].strip() if i_payment is not None else ""
    if pse_dispute_id is None and not payment:
        raise SettlementFileError(line, "a dispute row needs pse_dispute_id or pse_payment_id")
    currency = _currency(line, value["currency"], "currency")
    amount = abs(_minor(line, value["amount"], "amount"))
    if amount < 1:
        raise SettlementFileError(line, "a dispute row's amount must not be 0")
    settlement_currency = (
        _currency(line, value["settlement_currency"], "settlement_currency")
        if value["settlement_currency"].strip()
        else None
    )
    settlement = None
    if value["settlement_amount"].strip():
        if settlement_currency is None:
            raise SettlementFileError(line, "settlement_amount needs settlement_currency")
        settlement = _money(
            line,
            abs(_minor(line, value["settlement_amount"], "settlement_amount")),
            settlement_currency,
            "settlement_amount",
        )
    fee = None
    if value["fee"].strip():
        fee = _money(
            line, _minor(line, value["fee"], "fee"), settlement_currency or currency, "fee"
        )
    return SettledDispute(
        line,
        pse_dispute_id,
        (payment,) if payment else (),
        _money(line, amount, currency, "amount"),
        movement,
        _time(line, value["settled_at"], "settled_at"),
        fee,
        settlement,
    )


def _major(line: int, value: str, currency: str, column: str) -> Money:
    text = value.strip()
    amount = None
    # Decimal() also reads "١٢" as 12: a file's amounts are ASCII.
    if text.isascii():
        with contextlib.suppress(InvalidOperation):
            amount = Decimal(text).copy_abs()  # exact: abs() rounds to the context
    if amount is None:
        raise SettlementFileError(line, f"{column} {value!r} is not a decimal amount")
    try:
        # Exact: an export carries what moved, to the minor unit; digits past
        # it are a damaged file, never rounded into an amount.
        return Money.from_major(amount, currency, exact=True)
    except DomainError as exc:
        raise SettlementFileError(line, f"{column}: {exc.detail}") from None


def _stripe(
    reader: Iterator[list[str]], names: list[str]
) -> Iterator[SettlementRow | SettledDispute]:
    categories = {"refund": SettledStatus.SUCCEEDED, "refund_failure": SettledStatus.FAILED}
    has_customer_amount = "customer_facing_amount" in names and "customer_facing_currency" in names
    reference_column = (
        "refund_metadata[refund_id]" if "refund_metadata[refund_id]" in names else None
    )
    payment_columns = [column for column in STRIPE_PAYMENT_COLUMNS if column in names]
    for line, record in _records(reader, len(names)):
        r = dict(zip(names, record, strict=True))
        category = r["reporting_category"].strip()
        status = categories.get(category)
        if status is None:
            movement = DISPUTE_KINDS.get(category)
            if movement is not None:
                yield _stripe_dispute(line, r, movement, has_customer_amount, payment_columns)
            continue
        amount, settled, fee = _stripe_amounts(line, r, has_customer_amount)
        if not amount.amount:
            raise SettlementFileError(line, "amount must be a positive number of minor units")
        pse_id = r["source_id"].strip() or None
        reference = (r[reference_column].strip() or None) if reference_column else None
        if pse_id is None and reference is None:
            raise SettlementFileError(line, "a refund row needs source_id")
        yield SettlementRow.of(
            line=line,
            pse_refund_id=pse_id,
            reference=reference,
            amount=amount,
            status=status,
            settled_at=_time(line, r.get("created_utc", ""), "created_utc"),
            fee=fee,
            settlement_amount=settled,
        )


def _stripe_amounts(
    line: int, r: dict[str, str], has_customer_amount: bool
) -> tuple[Money, Money, Money | None]:
    """A balance row's amount (what the customer saw, else the gross), its
    gross in the settlement currency, and its fee (in that currency), checked
    in that order."""
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
    if "fee" in r and r["fee"].strip():
        fee = _major(line, r["fee"], settlement_currency, "fee")
    return amount, settled, fee


def _stripe_dispute(
    line: int,
    r: dict[str, str],
    movement: DisputeMovement,
    has_customer_amount: bool,
    payment_columns: list[str],
) -> SettledDispute:
    """A `dispute` (withdrawal, gross negative) or `dispute_reversal`
    (reinstatement) row: `source_id` is the dispute's id."""
    amount, settled, fee = _stripe_amounts(line, r, has_customer_amount)
    pse_dispute_id = r["source_id"].strip() or None
    payments = tuple(dict.fromkeys(p for c in payment_columns if (p := r[c].strip())))
    if pse_dispute_id is None and not payments:
        raise SettlementFileError(line, "a dispute row needs source_id")
    return SettledDispute(
        line,
        pse_dispute_id,
        payments,
        amount,
        movement,
        _time(line, r.get("created_utc", ""), "created_utc"),
        fee,
        settled,
    )
