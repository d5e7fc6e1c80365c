"""The refund policy: caps, the refund window, approval tiers, approval slots."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.errors import AmountExceedsLimit, AmountExceedsRefundable, CurrencyMismatch
from app.domain.money import Money
from app.domain.policy import (
    ApprovalTier,
    RefundDecision,
    RefundPolicy,
    TrustedRate,
    approvals_satisfied,
    can_fill_a_slot,
)
from tests.unit.builders import CONTRACT_TIERS

CAPTURED_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DEADLINE_180 = CAPTURED_AT + timedelta(days=180)
SOON = CAPTURED_AT + timedelta(days=3)


def jpy(amount: int) -> Money:
    return Money(amount, "JPY")


def usd(amount: int) -> Money:
    return Money(amount, "USD")


def decide(
    policy: RefundPolicy,
    amount: Money,
    *,
    now: datetime = SOON,
    payment_method: str | None = "card",
    high_risk: bool = False,
    window_days: int | None = None,
    auto_approved_today: int = 0,
) -> RefundDecision:
    return policy.decide(
        amount=amount,
        captured_at=CAPTURED_AT,
        payment_method=payment_method,
        high_risk=high_risk,
        now=now,
        window_days=window_days,
        auto_approved_today=auto_approved_today,
    )


# -- check_amount (rule 1) ----------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, -12_000])
def test_an_amount_below_one_minor_unit_is_refused(amount: int) -> None:
    with pytest.raises(AmountExceedsRefundable) as info:
        RefundPolicy().check_amount(jpy(amount), jpy(12_000))
    assert info.value.code == "amount_exceeds_refundable"


def test_an_amount_above_the_refundable_amount_is_refused() -> None:
    with pytest.raises(AmountExceedsRefundable):
        RefundPolicy().check_amount(jpy(12_001), jpy(12_000))


@pytest.mark.parametrize("amount", [1, 5_000, 12_000])
def test_any_amount_from_one_to_the_refundable_amount_is_accepted(amount: int) -> None:
    RefundPolicy().check_amount(jpy(amount), jpy(12_000))


def test_nothing_is_refundable_once_the_payment_is_fully_refunded() -> None:
    with pytest.raises(AmountExceedsRefundable):
        RefundPolicy().check_amount(jpy(1), jpy(0))


def test_an_amount_above_the_cap_of_its_currency_is_refused_as_over_the_limit() -> None:
    policy = RefundPolicy(max_refund_amount={"JPY": 5_000})
    with pytest.raises(AmountExceedsLimit) as info:
        policy.check_amount(jpy(5_001), jpy(12_000))
    assert info.value.code == "amount_exceeds_limit"


def test_an_amount_equal_to_the_cap_is_accepted() -> None:
    RefundPolicy(max_refund_amount={"JPY": 5_000}).check_amount(jpy(5_000), jpy(12_000))


def test_the_cap_of_another_currency_does_not_apply() -> None:
    policy = RefundPolicy(max_refund_amount={"JPY": 5_000})
    policy.check_amount(usd(900_000), usd(1_000_000))


def test_the_refundable_amount_is_checked_before_the_cap() -> None:
    policy = RefundPolicy(max_refund_amount={"JPY": 5_000})
    with pytest.raises(AmountExceedsRefundable):
        policy.check_amount(jpy(20_000), jpy(12_000))


def test_an_amount_in_another_currency_than_the_refundable_one_is_refused() -> None:
    with pytest.raises(CurrencyMismatch):
        RefundPolicy().check_amount(usd(100), jpy(12_000))


@settings(max_examples=300, deadline=None, database=None)
@given(
    refundable=st.integers(min_value=0, max_value=10**12),
    amount=st.integers(min_value=-(10**12), max_value=2 * 10**12),
)
def test_without_a_cap_exactly_the_amounts_from_one_to_the_refundable_amount_pass(
    refundable: int, amount: int
) -> None:
    policy = RefundPolicy()
    if 1 <= amount <= refundable:
        policy.check_amount(jpy(amount), jpy(refundable))
    else:
        with pytest.raises(AmountExceedsRefundable):
            policy.check_amount(jpy(amount), jpy(refundable))


@settings(max_examples=100, deadline=None, database=None)
@given(refundable=st.integers(min_value=1, max_value=10**6), data=st.data())
def test_without_a_cap_the_edges_one_and_refundable_pass_and_their_neighbours_do_not(
    refundable: int, data: st.DataObject
) -> None:
    policy = RefundPolicy()
    policy.check_amount(jpy(1), jpy(refundable))
    policy.check_amount(jpy(refundable), jpy(refundable))
    outside = data.draw(st.sampled_from([0, refundable + 1]))
    with pytest.raises(AmountExceedsRefundable):
        policy.check_amount(jpy(outside), jpy(refundable))


# -- the refund deadline --------------------------------------------------------


def test_the_refund_deadline_is_the_capture_time_plus_the_policy_window() -> None:
    assert RefundPolicy(refund_window_days=180).refund_deadline(CAPTURED_AT) == DEADLINE_180


def test_an_accounts_own_window_replaces_the_policy_window_in_the_deadline() -> None:
    policy = RefundPolicy(refund_window_days=180)
    assert policy.refund_deadline(CAPTURED_AT, 30) == CAPTURED_AT + timedelta(days=30)


# -- required_levels and tier_levels (rule 3) --------------------------------------


@pytest.mark.parametrize(
    ("approvals", "min_level", "levels"),
    [(1, 1, (1,)), (1, 3, (3,)), (2, 2, (2, 1)), (3, 3, (3, 1, 1))],
)
def test_a_tier_needs_one_approval_of_its_minimum_level_and_the_rest_of_any_level(
    approvals: int, min_level: int, levels: tuple[int, ...]
) -> None:
    tier = ApprovalTier("JPY", above=0, approvals=approvals, min_level=min_level)
    assert tier.required_levels() == levels


def tiers_of(policy: RefundPolicy, amount: Money, now: datetime = SOON) -> tuple[int, ...]:
    return policy.tier_levels(amount, now)


def jpy_to_usd(rate: str = "0.0067", as_of: date = SOON.date()) -> TrustedRate:
    return TrustedRate("JPY", "USD", Decimal(rate), as_of)


def test_without_tiers_no_approval_is_needed() -> None:
    assert tiers_of(RefundPolicy(), jpy(10**9)) == ()


def test_an_amount_below_every_tier_needs_no_approval() -> None:
    assert tiers_of(RefundPolicy(approval_tiers=CONTRACT_TIERS), jpy(9_999)) == ()


def test_an_amount_exactly_at_a_tiers_threshold_does_not_exceed_it() -> None:
    policy = RefundPolicy(approval_tiers=CONTRACT_TIERS)
    assert tiers_of(policy, jpy(10_000)) == ()
    assert tiers_of(policy, jpy(100_000)) == (1,)


def test_an_amount_one_unit_above_a_threshold_exceeds_it() -> None:
    policy = RefundPolicy(approval_tiers=CONTRACT_TIERS)
    assert tiers_of(policy, jpy(10_001)) == (1,)
    assert tiers_of(policy, jpy(100_001)) == (2, 1)


def test_the_highest_exceeded_tier_applies_not_the_first_listed() -> None:
    policy = RefundPolicy(approval_tiers=tuple(reversed(CONTRACT_TIERS)))
    assert tiers_of(policy, jpy(500_000)) == (2, 1)
    assert tiers_of(policy, jpy(50_000)) == (1,)


def test_the_highest_exceeded_tier_applies_even_when_it_asks_for_less() -> None:
    policy = RefundPolicy(
        approval_tiers=(
            ApprovalTier("JPY", above=1_000, approvals=3, min_level=3),
            ApprovalTier("JPY", above=5_000, approvals=1, min_level=2),
        )
    )
    assert tiers_of(policy, jpy(6_000)) == (2,)


def test_a_refund_in_another_currency_is_measured_by_the_operators_rate() -> None:
    # JPY 12,000 at 0.0067 is USD 80.40: above a USD 50.00 tier.
    policy = RefundPolicy(
        approval_tiers=(ApprovalTier("USD", above=5_000, approvals=1),), rates=(jpy_to_usd(),)
    )
    assert tiers_of(policy, jpy(12_000)) == (1,)
    # JPY 6,000 is USD 40.20: below it.
    assert tiers_of(policy, jpy(6_000)) == ()


def test_the_inverse_of_a_configured_rate_measures_the_other_way() -> None:
    # USD per JPY configured; a USD refund is measured against JPY tiers by 1/0.0067.
    policy = RefundPolicy(
        approval_tiers=(ApprovalTier("JPY", above=100_000, approvals=2, min_level=2),),
        rates=(jpy_to_usd(),),
    )
    assert tiers_of(policy, usd(67_000)) == ()  # USD 670.00 is exactly JPY 100,000
    assert tiers_of(policy, usd(67_100)) == (2, 1)  # USD 671.00 is about JPY 100,149
    assert tiers_of(policy, usd(60_000)) == ()  # USD 600.00 is about JPY 89,552


def test_a_converted_amount_exactly_at_the_threshold_does_not_exceed_it() -> None:
    policy = RefundPolicy(
        approval_tiers=(ApprovalTier("USD", above=8_040, approvals=1),), rates=(jpy_to_usd(),)
    )
    assert tiers_of(policy, jpy(12_000)) == ()
    assert tiers_of(policy, jpy(12_002)) == (1,)


def test_when_tiers_of_two_currencies_apply_the_more_demanding_wins() -> None:
    policy = RefundPolicy(
        approval_tiers=(
            ApprovalTier("JPY", above=10_000, approvals=1, min_level=1),
            ApprovalTier("USD", above=50_000, approvals=2, min_level=2),
        ),
        rates=(jpy_to_usd(),),
    )
    # JPY 100,000 is USD 670.00: both tiers exceeded.
    assert tiers_of(policy, jpy(100_000)) == (2, 1)
    # JPY 20,000 is USD 134.00: only the JPY tier.
    assert tiers_of(policy, jpy(20_000)) == (1,)


def test_when_no_tier_can_measure_the_currency_one_approval_is_required() -> None:
    policy = RefundPolicy(approval_tiers=(ApprovalTier("EUR", above=1_000_000),))
    assert tiers_of(policy, jpy(1)) == (1,)


def test_without_a_trusted_rate_a_tier_of_another_currency_cannot_be_skipped() -> None:
    # The store's own settlement rate plays no part: with no operator rate
    # the EUR refund cannot be measured against JPY tiers and needs one approval.
    policy = RefundPolicy(approval_tiers=CONTRACT_TIERS)
    assert tiers_of(policy, Money(5_000_000, "EUR")) == (1,)


def test_a_rate_older_than_the_allowed_age_is_not_trusted() -> None:
    policy = RefundPolicy(
        approval_tiers=(ApprovalTier("USD", above=100_000, approvals=2, min_level=2),),
        rates=(jpy_to_usd(as_of=SOON.date() - timedelta(days=10)),),
        rate_max_age_days=7,
    )
    assert tiers_of(policy, jpy(1_000)) == (1,)  # stale: cannot measure, one approval
    fresh = RefundPolicy(
        approval_tiers=policy.approval_tiers, rates=policy.rates, rate_max_age_days=30
    )
    assert tiers_of(fresh, jpy(1_000)) == ()


def test_a_tier_in_another_currency_without_a_rate_is_ignored_when_one_in_ours_applies() -> None:
    policy = RefundPolicy(
        approval_tiers=(
            ApprovalTier("JPY", above=10_000),
            ApprovalTier("USD", above=1, approvals=2, min_level=3),
        )
    )
    # No JPY→USD rate: the USD tier is out of reach, the JPY tier is not exceeded.
    assert tiers_of(policy, jpy(5_000)) == ()


@st.composite
def tier_sets(draw: st.DrawFn) -> tuple[ApprovalTier, ...]:
    aboves = draw(
        st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=1, max_size=6, unique=True)
    )
    return tuple(
        ApprovalTier(
            "JPY",
            above=above,
            approvals=draw(st.integers(min_value=1, max_value=4)),
            min_level=draw(st.integers(min_value=1, max_value=3)),
        )
        for above in aboves
    )


@settings(max_examples=300, deadline=None, database=None)
@given(tiers=tier_sets(), amount=st.integers(min_value=1, max_value=1_100_000))
def test_the_tier_with_the_largest_threshold_below_the_amount_decides_the_levels(
    tiers: tuple[ApprovalTier, ...], amount: int
) -> None:
    exceeded = [tier for tier in tiers if tier.above < amount]
    if exceeded:
        top = max(exceeded, key=lambda tier: tier.above)
        expected = (top.min_level,) + (1,) * (top.approvals - 1)
    else:
        expected = ()
    assert tiers_of(RefundPolicy(approval_tiers=tiers), jpy(amount)) == expected


# -- decide: the window, offline methods, risk, the daily limit -------------------------


def test_a_refund_past_the_window_needs_an_offline_payout() -> None:
    decision = decide(RefundPolicy(), jpy(3_000), now=DEADLINE_180 + timedelta(seconds=1))
    assert decision.offline
    assert decision.offline_reason == "refund_window_passed"


def test_a_refund_one_day_before_the_deadline_goes_back_through_the_pse() -> None:
    decision = decide(RefundPolicy(), jpy(3_000), now=DEADLINE_180 - timedelta(days=1))
    assert not decision.offline
    assert decision.offline_reason is None


def test_a_refund_at_the_deadline_itself_is_still_within_the_window() -> None:
    assert not decide(RefundPolicy(), jpy(3_000), now=DEADLINE_180).offline


def test_an_accounts_shorter_window_sends_an_older_payment_offline() -> None:
    now = CAPTURED_AT + timedelta(days=31)
    assert not decide(RefundPolicy(refund_window_days=180), jpy(3_000), now=now).offline
    decision = decide(RefundPolicy(refund_window_days=180), jpy(3_000), now=now, window_days=30)
    assert decision.offline_reason == "refund_window_passed"


def test_an_accounts_longer_window_keeps_an_old_payment_refundable() -> None:
    now = CAPTURED_AT + timedelta(days=200)
    assert decide(RefundPolicy(refund_window_days=180), jpy(3_000), now=now).offline
    assert not decide(
        RefundPolicy(refund_window_days=180), jpy(3_000), now=now, window_days=365
    ).offline


@pytest.mark.parametrize("method", ["konbini", "KONBINI", "pay_easy", "bank_transfer", "cash"])
def test_a_cash_like_payment_method_needs_an_offline_payout(method: str) -> None:
    decision = decide(RefundPolicy(), jpy(3_000), payment_method=method)
    assert decision.offline
    assert decision.offline_reason == "payment_method_not_refundable"


@pytest.mark.parametrize("method", ["card", "paypay", None])
def test_a_card_or_wallet_payment_is_refunded_through_the_pse(method: str | None) -> None:
    assert not decide(RefundPolicy(), jpy(3_000), payment_method=method).offline


def test_a_konbini_payment_past_the_window_reports_the_window_as_the_reason() -> None:
    decision = decide(
        RefundPolicy(), jpy(3_000), payment_method="konbini", now=DEADLINE_180 + timedelta(days=1)
    )
    assert decision.offline_reason == "refund_window_passed"


def test_an_offline_refund_still_needs_the_approvals_of_its_tier() -> None:
    decision = decide(
        RefundPolicy(approval_tiers=CONTRACT_TIERS), jpy(200_000), payment_method="konbini"
    )
    assert decision.offline
    assert decision.required_approvals == (2, 1)


def test_a_small_refund_needs_no_approval() -> None:
    decision = decide(RefundPolicy(approval_tiers=CONTRACT_TIERS), jpy(3_000))
    assert decision.required_approvals == ()
    assert not decision.needs_approval


def test_a_high_risk_payment_needs_one_approval_whatever_the_amount() -> None:
    decision = decide(RefundPolicy(), jpy(1), high_risk=True)
    assert decision.required_approvals == (1,)
    assert decision.needs_approval


def test_a_high_risk_payment_over_a_tier_needs_that_tiers_approvals() -> None:
    decision = decide(RefundPolicy(approval_tiers=CONTRACT_TIERS), jpy(200_000), high_risk=True)
    assert decision.required_approvals == (2, 1)


def test_a_refund_within_the_daily_auto_approve_limit_counts_toward_it() -> None:
    policy = RefundPolicy(daily_auto_approve_limit={"JPY": 10_000})
    decision = decide(policy, jpy(4_000), auto_approved_today=6_000)
    assert decision.required_approvals == ()
    assert decision.counts_toward_daily_limit


def test_a_refund_that_would_pass_the_daily_auto_approve_limit_needs_one_approval() -> None:
    policy = RefundPolicy(daily_auto_approve_limit={"JPY": 10_000})
    decision = decide(policy, jpy(4_001), auto_approved_today=6_000)
    assert decision.required_approvals == (1,)
    assert not decision.counts_toward_daily_limit


def test_a_single_refund_larger_than_the_daily_limit_needs_one_approval() -> None:
    policy = RefundPolicy(daily_auto_approve_limit={"JPY": 10_000})
    assert decide(policy, jpy(10_001)).required_approvals == (1,)


def test_the_daily_limit_of_another_currency_does_not_apply() -> None:
    policy = RefundPolicy(daily_auto_approve_limit={"USD": 100})
    decision = decide(policy, jpy(10_000), auto_approved_today=10**9)
    assert decision.required_approvals == ()
    assert not decision.counts_toward_daily_limit


def test_without_a_daily_limit_nothing_counts_toward_one() -> None:
    assert not decide(RefundPolicy(), jpy(3_000)).counts_toward_daily_limit


def test_a_refund_needing_approval_anyway_does_not_count_toward_the_daily_limit() -> None:
    policy = RefundPolicy(
        approval_tiers=CONTRACT_TIERS, daily_auto_approve_limit={"JPY": 1_000_000}
    )
    decision = decide(policy, jpy(50_000))
    assert decision.required_approvals == (1,)
    assert not decision.counts_toward_daily_limit


# -- approval slots ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "granted", "satisfied"),
    [
        ((), [], True),
        ((1,), [], False),
        ((1,), [1], True),
        ((1,), [3], True),
        ((2,), [1], False),
        ((2, 1), [1], False),
        ((2, 1), [2], False),
        ((2, 1), [1, 2], True),
        ((2, 1), [2, 1], True),
        ((2, 1), [2, 2], True),
        ((2, 1), [1, 1], False),
        ((3, 1, 1), [1, 1, 3], True),
        ((3, 1, 1), [2, 2, 2], False),
    ],
)
def test_approvals_are_satisfied_when_every_slot_has_a_distinct_approval_of_its_level(
    required: tuple[int, ...], granted: list[int], satisfied: bool
) -> None:
    assert approvals_satisfied(required, granted) is satisfied


@pytest.mark.parametrize(
    ("required", "granted", "level", "fills"),
    [
        ((1,), [], 1, True),
        ((2,), [], 1, False),
        ((2,), [], 3, True),
        ((2, 1), [], 1, True),
        ((2, 1), [1], 1, False),
        ((2, 1), [1], 2, True),
        ((2, 1), [2], 1, True),
        ((2, 1), [3], 1, True),
        ((2, 1), [1, 2], 3, False),
        ((3, 1, 1), [1, 1], 2, False),
        ((3, 1, 1), [1, 1], 3, True),
    ],
)
def test_one_more_approval_counts_only_when_it_fills_a_still_open_slot(
    required: tuple[int, ...], granted: list[int], level: int, fills: bool
) -> None:
    assert can_fill_a_slot(required, granted, level) is fills
