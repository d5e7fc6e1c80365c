"""The refund policy: caps, the refund window and approval tiers.

Pure functions of their inputs: the current time and today's auto-approved
total are passed in, never looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Context, Decimal
from enum import StrEnum

from app.domain.errors import AmountExceedsLimit, AmountExceedsRefundable
from app.domain.money import Money

# Cash-like methods the PSE cannot send money back through (KOMOJU konbini and
# similar): the customer must be paid out another way.
DEFAULT_OFFLINE_METHODS: frozenset[str] = frozenset(
    {"konbini", "pay_easy", "bank_transfer", "cash", "cash_on_delivery"}
)


@dataclass(frozen=True, slots=True)
class ApprovalTier:
    currency: str
    above: int
    approvals: int = 1
    min_level: int = 1

    def required_levels(self) -> tuple[int, ...]:
        """One slot of `min_level`, the rest open to any level, highest first."""
        return (self.min_level,) + (1,) * (self.approvals - 1)


@dataclass(frozen=True, slots=True)
class TrustedRate:
    """An exchange rate the operator configured (`[policy.rates]`): units of
    `to_currency` per one major unit of `from_currency`, as of a date."""

    from_currency: str
    to_currency: str
    rate: Decimal
    as_of: date


# Inverting a configured rate: far more digits than any rate carries, so the
# one rounding that matters stays the half-even step of Money.convert.
_INVERSE = Context(prec=34)


@dataclass(frozen=True, slots=True)
class RefundDecision:
    """What the policy decided for a new refund."""

    required_approvals: tuple[int, ...]
    offline: bool
    offline_reason: str | None
    counts_toward_daily_limit: bool

    @property
    def needs_approval(self) -> bool:
        return bool(self.required_approvals)


class ApprovalCause(StrEnum):
    """Why a refund waits for people."""

    TIER = "tier"  # above an approval tier (`ApprovalReason.tier`)
    NO_OPERATOR_RATE = "no_operator_rate"  # tiers of other currencies only, and no rate to them
    HIGH_RISK = "high_risk"  # the payment is high-risk
    DAILY_LIMIT = "daily_limit"  # the day's auto-approved total would pass the limit
    EARLIER_POLICY = "earlier_policy"  # the policy in force now would not ask


@dataclass(frozen=True, slots=True)
class ApprovalReason:
    cause: ApprovalCause
    # TIER: the highest exceeded tier (its `above` in its `currency`).
    tier: ApprovalTier | None = None
    # DAILY_LIMIT: the limit, in minor units of the refund's currency.
    daily_limit: int | None = None


class OnDispute(StrEnum):
    """What a dispute opening on a payment does to its refunds not yet sent to the PSE."""

    HOLD = "hold"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class RefundPolicy:
    refund_window_days: int = 180
    max_refund_amount: Mapping[str, int] = field(default_factory=dict)
    daily_auto_approve_limit: Mapping[str, int] = field(default_factory=dict)
    approval_tiers: tuple[ApprovalTier, ...] = ()
    offline_payment_methods: frozenset[str] = DEFAULT_OFFLINE_METHODS
    rates: tuple[TrustedRate, ...] = ()
    # A configured rate older than this is not trusted (None: any age).
    rate_max_age_days: int | None = None
    on_dispute: OnDispute = OnDispute.HOLD

    def refund_deadline(self, captured_at: datetime, window_days: int | None = None) -> datetime:
        return captured_at + timedelta(days=window_days or self.refund_window_days)

    def check_amount(self, amount: Money, refundable: Money) -> None:
        """Rule 1: 1 ≤ amount ≤ refundable, and not above the per-refund cap."""
        if amount.amount < 1 or amount > refundable:
            raise AmountExceedsRefundable(
                f"amount {amount.amount} {amount.currency} must be between 1 and the "
                f"refundable amount {refundable.amount}"
            )
        cap = self.max_refund_amount.get(amount.currency)
        if cap is not None and amount.amount > cap:
            raise AmountExceedsLimit(
                f"amount {amount.amount} {amount.currency} is above the per-refund limit {cap}"
            )

    def trusted_rate(self, from_currency: str, to_currency: str, now: datetime) -> Decimal | None:
        """The operator's rate from one currency to another (or the inverse of
        the opposite one), None when there is none fresh enough."""
        for rate in self.rates:
            if self.rate_max_age_days is not None and (now.date() - rate.as_of).days > (
                self.rate_max_age_days
            ):
                continue
            if (rate.from_currency, rate.to_currency) == (from_currency, to_currency):
                return rate.rate
            if (rate.from_currency, rate.to_currency) == (to_currency, from_currency):
                return _INVERSE.divide(Decimal(1), rate.rate)
        return None

    def tier_levels(self, amount: Money, now: datetime) -> tuple[int, ...]:
        """Rule 3: the levels the highest exceeded tier requires, () when none applies.

        Tiers in the refund's currency apply directly; tiers of another currency
        apply only through a rate the operator configured. The payment's own
        settlement rate is the store's word and never decides approvals. When
        tiers exist but none can be reached for this currency, one approval is
        required: an amount we cannot measure is not waved through.
        """
        if not self.approval_tiers:
            return ()
        measurable, top = self._highest_tier(amount, now)
        if not measurable:
            return (1,)
        return top.required_levels() if top is not None else ()

    def _highest_tier(self, amount: Money, now: datetime) -> tuple[bool, ApprovalTier | None]:
        """(whether any tier can measure the amount, the tier that applies or None)."""
        comparable: list[tuple[ApprovalTier, int]] = []
        for tier in self.approval_tiers:
            if tier.currency == amount.currency:
                comparable.append((tier, amount.amount))
                continue
            rate = self.trusted_rate(amount.currency, tier.currency, now)
            if rate is not None:
                comparable.append((tier, amount.convert(rate, tier.currency).amount))
        if not comparable:
            return False, None
        exceeded = [tier for tier, value in comparable if value > tier.above]
        if not exceeded:
            return True, None
        # The highest exceeded tier of each currency applies; when tiers of two
        # currencies both apply, the more demanding one wins.
        highest: dict[str, ApprovalTier] = {}
        for tier in exceeded:
            if tier.currency not in highest or tier.above > highest[tier.currency].above:
                highest[tier.currency] = tier
        return True, max(highest.values(), key=lambda t: (t.approvals, t.min_level))

    def decide(
        self,
        *,
        amount: Money,
        captured_at: datetime,
        payment_method: str | None,
        high_risk: bool,
        now: datetime,
        window_days: int | None,
        auto_approved_today: int,
    ) -> RefundDecision:
        offline_reason: str | None = None
        if now > self.refund_deadline(captured_at, window_days):
            offline_reason = "refund_window_passed"
        elif payment_method and payment_method.lower() in self.offline_payment_methods:
            offline_reason = "payment_method_not_refundable"

        levels = self.tier_levels(amount, now)
        if high_risk and not levels:
            levels = (1,)
        counts_toward_daily = False
        if not levels:
            limit = self.daily_auto_approve_limit.get(amount.currency)
            if limit is not None:
                if auto_approved_today + amount.amount > limit:
                    levels = (1,)
                else:
                    counts_toward_daily = True
        return RefundDecision(
            required_approvals=levels,
            offline=offline_reason is not None,
            offline_reason=offline_reason,
            counts_toward_daily_limit=counts_toward_daily,
        )

    def approval_reasons(
        self, *, amount: Money, high_risk: bool, requested_at: datetime
    ) -> tuple[ApprovalReason, ...]:
        """Why `decide` asked people to approve a refund of `amount` requested at
        `requested_at`, most demanding first, recomputed from this policy
        rather than stored with the refund.

        The day's auto-approved total at the time is not kept: when neither a
        tier nor the risk explains the approval, the daily limit did (as
        `decide` consults it only then). A policy changed since the request
        may explain nothing: `EARLIER_POLICY` says so.
        """
        reasons: list[ApprovalReason] = []
        if self.approval_tiers:
            measurable, top = self._highest_tier(amount, requested_at)
            if not measurable:
                reasons.append(ApprovalReason(ApprovalCause.NO_OPERATOR_RATE))
            elif top is not None:
                reasons.append(ApprovalReason(ApprovalCause.TIER, tier=top))
        if high_risk:
            reasons.append(ApprovalReason(ApprovalCause.HIGH_RISK))
        if not reasons:
            limit = self.daily_auto_approve_limit.get(amount.currency)
            if limit is not None:
                reasons.append(ApprovalReason(ApprovalCause.DAILY_LIMIT, daily_limit=limit))
            else:
                reasons.append(ApprovalReason(ApprovalCause.EARLIER_POLICY))
        return tuple(reasons)


def approvals_satisfied(required: tuple[int, ...], granted_levels: list[int]) -> bool:
    """Whether distinct approvals of `granted_levels` fill every required slot."""
    return _unfilled(required, granted_levels) == []


def can_fill_a_slot(required: tuple[int, ...], granted_levels: list[int], level: int) -> bool:
    """Whether one more approval at `level` fills a still-open slot."""
    return any(level >= slot for slot in _unfilled(required, granted_levels))


def open_slots(required: tuple[int, ...], granted_levels: list[int]) -> tuple[int, ...]:
    """The levels of the slots `granted_levels` leave open, most demanding first."""
    return tuple(_unfilled(required, granted_levels))


def _unfilled(required: tuple[int, ...], granted_levels: list[int]) -> list[int]:
    # Greedy matching is optimal here: slots from the most to the least
    # demanding, each taken by the lowest remaining approval able to fill it.
    slots = sorted(required, reverse=True)
    available = sorted(granted_levels)
    open_slots: list[int] = []
    for slot in slots:
        for i, level in enumerate(available):
            if level >= slot:
                del available[i]
                break
        else:
            open_slots.append(slot)
    return open_slots
