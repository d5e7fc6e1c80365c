"""Reconciliation against a PSE's settlement file: what each line means for us.

A refund line is matched to our refund by the PSE's refund id, else by our
reference. The file may settle a refund we still hold as `unknown` or
`pending`: that is the PSE's word that the money left, and the refund becomes
`succeeded`. Nothing else in our records is changed by a file.

A dispute line (the PSE took a disputed amount back, or reinstated it) is
matched to our dispute (`app.domain.reconciliation_disputes`); it changes
nothing in our records either.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from app.domain.models import RefundStatus
from app.domain.money import Money
from app.domain.pse import (
    PseRefund,
    PseRefundState,
)
from app.domain.records import ReconciliationLine


class SettledStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PENDING = "pending"


class Outcome(StrEnum):
    MATCHED = "matched"
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"
    MISSING_IN_SERVICE = "missing_in_service"  # the PSE settled a refund we do not know
    MISSING_IN_FILE = "missing_in_file"  # we think it succeeded; the file does not have it
    # Dispute lines: money the PSE took back for a dispute, or gave back.
    DISPUTE_MATCHED = "dispute_matched"
    DISPUTE_AMOUNT_MISMATCH = "dispute_amount_mismatch"
    DISPUTE_STATUS_MISMATCH = "dispute_status_mismatch"  # reinstated, ours open or lost
    DISPUTE_MISSING_IN_SERVICE = "dispute_missing_in_service"  # a dispute we do not know


OUTCOMES = tuple(Outcome)
# The outcomes where the file and our records agree; every other is a difference.
AGREEING = frozenset({Outcome.MATCHED, Outcome.DISPUTE_MATCHED})
# The outcomes of dispute lines (their `refund_id` holds our dispute's id).
DISPUTE_OUTCOMES = frozenset(
    {
        Outcome.DISPUTE_MATCHED,
        Outcome.DISPUTE_AMOUNT_MISMATCH,
        Outcome.DISPUTE_STATUS_MISMATCH,
        Outcome.DISPUTE_MISSING_IN_SERVICE,
    }
)


class ReconciliationStatus(StrEnum):
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class SettlementRow(NamedTuple):
    """One refund line of a settlement file, in our units: integers of minor
    units, each with its currency. The fee is in the settlement currency when
    the file gives one, else in the line's currency.

    Named tuples, like the other per-line values here: a large file makes a
    million of each, and a tuple is built several times faster than a frozen
    dataclass. Its fields are in the order the database takes a batch of
    lines in (`app.adapters.db.reconciliation`), so a batch is sent as it is."""

    line: int
    pse_refund_id: str | None
    reference: str | None
    amount: int
    currency: str
    status: SettledStatus
    settled_at: datetime | None
    fee: int | None = None
    settlement_amount: int | None = None
    settlement_currency: str | None = None

    @classmethod
    def of(
        cls,
        line: int,
        pse_refund_id: str | None,
        reference: str | None,
        amount: Money,
        status: SettledStatus,
        settled_at: datetime | None,
        fee: Money | None = None,
        settlement_amount: Money | None = None,
    ) -> SettlementRow:
        """A line from amounts as Money: the fee must be in the settlement
        amount's currency, else the line's, else in a settlement currency of
        its own (a file that names one and no settled amount)."""
        settlement_currency = settlement_amount.currency if settlement_amount else None
        if fee is not None and fee.currency != (settlement_currency or amount.currency):
            if settlement_currency is not None:
                raise ValueError("the fee is in another currency than the settled amount")
            settlement_currency = fee.currency
        return cls(
            line,
            pse_refund_id,
            reference,
            amount.amount,
            amount.currency,
            status,
            settled_at,
            None if fee is None else fee.amount,
            None if settlement_amount is None else settlement_amount.amount,
            settlement_currency,
        )

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)

    @property
    def fee_money(self) -> Money | None:
        if self.fee is None:
            return None
        return Money(self.fee, self.settlement_currency or self.currency)

    @property
    def settlement_money(self) -> Money | None:
        if self.settlement_amount is None or self.settlement_currency is None:
            return None
        return Money(self.settlement_amount, self.settlement_currency)

    def as_pse_view(self) -> PseRefund:
        """The line as a PSE report, to record fee and settled amount from it."""
        return PseRefund(
            pse_refund_id=self.pse_refund_id or "",
            state=PseRefundState(self.status.value),
            amount=self.money,
            reference=self.reference,
            fee=self.fee_money,
            settlement_amount=self.settlement_money,
        )


class RefundSnapshot(NamedTuple):
    """What matching needs of one of our refunds."""

    id: str
    pse_refund_id: str | None
    amount: Money
    status: RefundStatus


# What each file status agrees with in our records.
_AGREES: dict[SettledStatus, frozenset[RefundStatus]] = {
    SettledStatus.SUCCEEDED: frozenset({RefundStatus.SUCCEEDED}),
    SettledStatus.FAILED: frozenset({RefundStatus.FAILED}),
    SettledStatus.PENDING: frozenset({RefundStatus.PENDING}),
}
# Our statuses a settled line may resolve to `succeeded`.
ADOPTABLE = frozenset({RefundStatus.UNKNOWN, RefundStatus.PENDING})


class Verdict(NamedTuple):
    outcome: Outcome
    # The file proves an uncertain refund settled: make it `succeeded`.
    adopt: bool = False
    detail: str | None = None


def judge(row: SettlementRow, refund: RefundSnapshot | None) -> Verdict:
    if refund is None:
        return Verdict(Outcome.MISSING_IN_SERVICE, detail="no refund of ours has this id")
    if row.amount != refund.amount.amount or row.currency != refund.amount.currency:
        return Verdict(
            Outcome.AMOUNT_MISMATCH,
            detail=f"file {row.amount} {row.currency}, ours "
            f"{refund.amount.amount} {refund.amount.currency}",
        )
    if refund.status in _AGREES[row.status]:
        return Verdict(Outcome.MATCHED)
    if row.status is SettledStatus.SUCCEEDED and refund.status in ADOPTABLE:
        return Verdict(
            Outcome.MATCHED, adopt=True, detail=f"was {refund.status}; settled by the file"
        )
    return Verdict(Outcome.STATUS_MISMATCH, detail=f"file {row.status}, ours {refund.status}")


class JudgedBatch(NamedTuple):
    """What storing one batch of judged lines found: the lines per outcome,
    the earliest and latest settlement time of the batch's lines, and the
    ids of the lines whose refund the file proves settled (`Verdict.adopt`),
    in file order."""

    counts: dict[str, int]
    first: datetime | None
    last: datetime | None
    adopt_line_ids: list[int]


def settled_row(line: ReconciliationLine) -> SettlementRow:
    """A refund line back from its stored outcome line (the fee in the
    settlement currency, else the line's, as the parsers read it)."""
    if line.file_amount is None or line.currency is None or line.file_status is None:
        raise ValueError(f"outcome line {line.id} holds no file refund line")
    return SettlementRow(
        line.line or 0,
        line.pse_refund_id,
        line.reference,
        line.file_amount,
        line.currency,
        SettledStatus(line.file_status),
        line.settled_at,
        line.fee,
        line.settlement_amount,
        line.settlement_currency,
    )


def empty_counts() -> dict[str, int]:
    return {outcome.value: 0 for outcome in OUTCOMES}
