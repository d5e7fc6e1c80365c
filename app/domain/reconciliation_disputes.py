"""Dispute lines of a settlement file: money the PSE took back for a dispute
(a chargeback withdrawal), or gave back (a reinstatement), matched to our
disputes.

A line names its dispute by the PSE's dispute id when the file carries it
(Stripe's `source_id` of a `dispute` line), else by the PSE's id of the
disputed payment and the amount. What it is compared on:

- the amount (and currency): the dispute's, as we hold it;
- the direction: a reinstatement is the PSE's word that the merchant won,
  so our dispute should be `won` (or `closed`); one we hold as `open` or
  `lost` is a status mismatch. A withdrawal agrees with every status (the
  money leaves when the dispute opens, whatever comes after);
- a dispute's money is taken back once and reinstated once: a second line
  moving it the same way in one file is a status mismatch too.

A withdrawal on a payment with no dispute of ours is the line to read first:
the customer's bank has the money back, and the payment could still be
refunded, paying the customer twice. Nothing in our records is changed by a
dispute line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from app.domain.disputes import DisputeStatus
from app.domain.money import Money
from app.domain.reconciliation import Outcome, Verdict


class DisputeMovement(StrEnum):
    WITHDRAWN = "withdrawn"  # the PSE debited the disputed amount (Stripe `dispute`)
    REINSTATED = "reinstated"  # and credited it back (Stripe `dispute_reversal`)


class SettledDispute(NamedTuple):
    """One dispute line of a settlement file, in our units (the amount unsigned)."""

    line: int
    pse_dispute_id: str | None
    # The PSE's ids of the disputed payment the line names (Stripe: the charge
    # and the PaymentIntent); a payment is registered under one of them.
    pse_payment_ids: tuple[str, ...]
    amount: Money
    movement: DisputeMovement
    settled_at: datetime | None
    fee: Money | None = None
    settlement_amount: Money | None = None


class DisputeSnapshot(NamedTuple):
    """What matching needs of one of our disputes."""

    id: str
    pse_dispute_id: str
    payment_id: str
    pse_payment_id: str
    amount: Money
    status: DisputeStatus
    opened_at: datetime


class KnownDisputes(NamedTuple):
    """Our disputes and payments a batch of dispute lines names."""

    disputes: list[DisputeSnapshot]
    # PSE payment id -> our payment id, for every payment a line names (with
    # or without a dispute).
    payments: dict[str, str]


# (our dispute id, the money's direction) -> the line that moved it, in one run.
Taken = dict[tuple[str, DisputeMovement], int]


class DisputeIndex:
    """Our disputes and payments a batch of lines may name, looked up by the
    file's ids; and which disputes earlier lines of the run already took
    (`taken`, shared by the run's batches), so two lines of one payment and
    amount go to two disputes, and a third is told apart."""

    def __init__(self, taken: Taken) -> None:
        self.by_pse_id: dict[str, DisputeSnapshot] = {}
        self.by_payment: dict[str, list[DisputeSnapshot]] = {}
        self.payments: dict[str, str] = {}
        self.taken = taken

    def add(self, known: KnownDisputes) -> None:
        for dispute in sorted(known.disputes, key=lambda d: (d.opened_at, d.id)):
            if dispute.pse_dispute_id not in self.by_pse_id:
                self.by_pse_id[dispute.pse_dispute_id] = dispute
            listed = self.by_payment.setdefault(dispute.pse_payment_id, [])
            if all(other.id != dispute.id for other in listed):
                listed.append(dispute)
        self.payments.update(known.payments)

    def _of_payments(self, pse_payment_ids: Iterable[str]) -> list[DisputeSnapshot]:
        found: dict[str, DisputeSnapshot] = {}
        for pse_payment_id in pse_payment_ids:
            for dispute in self.by_payment.get(pse_payment_id, ()):
                found.setdefault(dispute.id, dispute)
        return sorted(found.values(), key=lambda d: (d.opened_at, d.id))

    def match(self, row: SettledDispute) -> tuple[DisputeSnapshot | None, Verdict]:
        """The dispute the line is about (None when we have none) and the verdict."""
        dispute = self.by_pse_id.get(row.pse_dispute_id) if row.pse_dispute_id else None
        if dispute is None:
            candidates = self._of_payments(row.pse_payment_ids)
            if not candidates:
                return None, missing(row, self.payments)
            free = [d for d in candidates if (d.id, row.movement) not in self.taken]
            same = [d for d in free or candidates if d.amount == row.amount]
            dispute = (same or free or candidates)[0]
        before = self.taken.setdefault((dispute.id, row.movement), row.line)
        return dispute, judge_dispute(row, dispute, None if before == row.line else before)


def missing(row: SettledDispute, payments: Mapping[str, str]) -> Verdict:
    known = [payments[p] for p in row.pse_payment_ids if p in payments]
    if known:
        if row.movement is DisputeMovement.WITHDRAWN:
            detail = (
                f"payment {known[0]} has no dispute of ours: the PSE took the money back, "
                "and the payment could still be refunded"
            )
        else:
            detail = f"payment {known[0]} has no dispute of ours"
    elif row.pse_dispute_id:
        detail = "no dispute of ours has this id"
    else:
        detail = "no payment of ours has this id"
    return Verdict(Outcome.DISPUTE_MISSING_IN_SERVICE, detail=detail)


# Our statuses a reinstatement contradicts: the PSE says the merchant won.
_NOT_REINSTATED = frozenset({DisputeStatus.OPEN, DisputeStatus.LOST})


def judge_dispute(
    row: SettledDispute, dispute: DisputeSnapshot, moved_at_line: int | None = None
) -> Verdict:
    """`moved_at_line`: an earlier line of the file that moved the dispute's
    money the same way."""
    of_payment = f"payment {dispute.payment_id}"
    if row.amount != dispute.amount:
        return Verdict(
            Outcome.DISPUTE_AMOUNT_MISMATCH,
            detail=f"file {row.amount.amount} {row.amount.currency}, ours "
            f"{dispute.amount.amount} {dispute.amount.currency}; {of_payment}",
        )
    if moved_at_line is not None:
        return Verdict(
            Outcome.DISPUTE_STATUS_MISMATCH,
            detail=f"file {row.movement} again (line {moved_at_line} was the first); {of_payment}",
        )
    if row.movement is DisputeMovement.REINSTATED and dispute.status in _NOT_REINSTATED:
        return Verdict(
            Outcome.DISPUTE_STATUS_MISMATCH,
            detail=f"file {row.movement}, ours {dispute.status}; {of_payment}",
        )
    return Verdict(Outcome.DISPUTE_MATCHED, detail=of_payment)
