"""The refund policy: caps, the refund window and approval tiers.

Pure functions of their inputs: the current time and today's auto-approved
total are passed in, never looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Context, Decimal

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
        comparable: list[tuple[ApprovalTier, int]] = []
        for tier in self.approval_tiers:
            if tier.currency == amount.currency:
                comparable.append((tier, amount.amount))
                continue
            rate = self.trusted_rate(amount.currency, tier.currency, now)
            if rate is not None:
                comparable.append((tier, amount.convert(rate, tier.currency).amount))
        if not comparable:
            return (1,)
        exceeded = [tier for tier, value in comparable if value > tier.above]
        if not exceeded:
            return ()
        # The highest exceeded tier of each currency applies; when tiers of two
        # currencies both apply, the more demanding one wins.
        highest: dict[str, ApprovalTier] = {}
        for tier in exceeded:
            if tier.currency not in highest or tier.above > highest[tier.currency].above:
                highest[tier.currency] = tier
        top = max(highest.values(), key=lambda t: (t.approvals, t.min_level))
        return top.required_levels()

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


def approvals_satisfied(required: tuple[int, ...], granted_levels: list[int]) -> bool:
    """Whether distinct approvals of `granted_levels` fill every required slot."""
    return _unfilled(required, granted_levels) == []


def can_fill_a_slot(required: tuple[int, ...], granted_levels: list[int], level: int) -> bool:
    """Whether one more approval at `level` fills a still-open slot."""
    return any(level >= slot for slot in _unfilled(required, granted_levels))


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
