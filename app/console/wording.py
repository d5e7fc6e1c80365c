"""The approval rules, durations and rates in words people read.

What the domain decided (why a refund waits for people, why a key cannot
decide it) is worded here, once, for every page that shows it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from app.console.formatting import money
from app.domain.models import Decision, DecisionBlock, Refund, RefundStatus
from app.domain.policy import ApprovalCause, ApprovalReason, ApprovalTier

_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def _count(n: int) -> str:
    return _NUMBERS.get(n, str(n))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def slots(levels: Sequence[int]) -> str:
    """The approvals a refund requires, one minimum level per slot:
    (2, 1) -> "2 approvals from different approvers, one of level 2 or above"."""
    if not levels:
        return "no approval"
    if len(levels) == 1:
        level = levels[0]
        return "1 approval" if level <= 1 else f"1 approval of level {level} or above"
    demanding = sorted(Counter(level for level in levels if level > 1).items(), reverse=True)
    text = f"{len(levels)} approvals from different approvers"
    if demanding:
        text += ", " + " and ".join(
            f"{_count(n)} of level {level} or above" for level, n in demanding
        )
    return text


def levels(open_slots: Sequence[int]) -> str:
    """(2,) -> "the open slot of level 2"; (3, 2) -> "the open slots of levels 3 and 2"."""
    if len(open_slots) == 1:
        return f"the open slot of level {open_slots[0]}"
    return "the open slots of levels " + " and ".join(str(level) for level in open_slots)


def _tier(tier: ApprovalTier) -> str:
    return slots(tier.required_levels())


def approval_reason(reason: ApprovalReason, currency: str) -> str:
    """Why a refund in `currency` waits for people, as one sentence."""
    cause = reason.cause
    if cause is ApprovalCause.TIER and reason.tier is not None:
        tier = reason.tier
        text = f"Above the {money(tier.above, tier.currency)} tier, which asks for {_tier(tier)}"
        if tier.currency != currency:
            text += f" ({currency} measured at the operator's rate)"
        return text + "."
    if cause is ApprovalCause.NO_OPERATOR_RATE:
        return (
            f"No operator rate converts {currency} to the currencies of the approval tiers, "
            "so one approval is required."
        )
    if cause is ApprovalCause.HIGH_RISK:
        return "The payment is marked high-risk."
    if cause is ApprovalCause.DAILY_LIMIT and reason.daily_limit is not None:
        return (
            "It would take the day's automatically approved refunds past the daily limit of "
            f"{money(reason.daily_limit, currency)}."
        )
    return "The policy in force when it was requested asked for approval; today's would not."


def decision_block(block: DecisionBlock, refund: Refund, viewer_id: str, level: int | None) -> str:
    """Why the key `viewer_id` (at `level`) cannot approve `refund`, as one sentence."""
    if block is DecisionBlock.SELF_APPROVAL:
        return (
            "You created this refund: the key that asks for a refund never decides it "
            "(separation of duties). Another approver must."
        )
    if block is DecisionBlock.ALREADY_DECIDED:
        mine = next((a for a in refund.approvals if a.approver_id == viewer_id), None)
        if mine is not None and mine.decision is Decision.APPROVED:
            text = f"You already approved it (at level {mine.level})"
        else:
            text = "You already decided on it"
        if refund.open_slots:
            text += f"; another approver must fill {levels(refund.open_slots)}"
        return text + "."
    if level is None:
        return "This key has no approval level, so it cannot approve or reject refunds."
    return f"Your level {level} cannot fill {levels(refund.open_slots)}."


def held(refund: Refund) -> str:
    """What a refund held for its payment's dispute (`payment_disputed`) cannot do."""
    if refund.status is RefundStatus.OFFLINE_REQUIRED:
        refused = "No offline payout can be recorded"
    else:
        refused = "It cannot be approved"
    return (
        f"{refused} while the payment has an open dispute: the customer's bank may be "
        "giving the money back already. The hold ends when its disputes are closed (won or "
        "closed: it goes on; lost: it is canceled). Rejecting or canceling it is still possible."
    )


def cannot_reject(refund: Refund, level: int | None) -> str:
    return (
        f"Rejecting it needs level {refund.reject_level} (its highest required level); "
        f"yours is {level}. You can approve it, or leave the veto to a level "
        f"{refund.reject_level} approver."
    )


def duration(span: timedelta) -> str:
    """12 s · 4 min · 3 h 5 min · 2 d 4 h: the two largest units at most."""
    seconds = max(int(span.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {seconds} s" if seconds and minutes < 10 else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def percent(ratio: Decimal | None) -> str:
    """0.0125 -> "1.25 %"; None (nothing to divide by) -> "—"."""
    if ratio is None:
        return "—"
    return f"{(ratio * 100).quantize(Decimal('0.01'), ROUND_HALF_EVEN)} %"


def refunds(n: int) -> str:
    return _plural(n, "refund")
