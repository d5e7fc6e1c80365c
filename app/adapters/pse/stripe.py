"""Stripe: refunds through `POST/GET /v1/refunds`, events through signed webhooks.

Stripe takes form-encoded bodies, answers JSON, and reports errors in the
envelope `{"error": {"type", "code", "message", "param"}}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from app.adapters.pse.base import DeclineRule, ids_in, unix_seconds
from app.adapters.pse.disputes import (
    UnreadableDispute,
    dispute_report,
    dispute_status,
    unix_time,
)
from app.adapters.pse.http import (
    ListPage,
    MetadataLimits,
    PseError,
    PseRequest,
    RefundListing,
    RefundResourceGateway,
    UnreadableRefund,
    WebhookProof,
    cursor_page,
    error_envelope,
    metadata_for,
    quoted,
    reference_in,
    shown,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.errors import DomainError
from app.domain.money import Money, exponent, is_currency
from app.domain.pse import (
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    Unanswered,
)

# Pinned so a change of the account's default API version cannot reshape answers.
STRIPE_API_VERSION = "2024-06-20"

_REFUNDS_PATH = "/v1/refunds"
_LIST_PAGE_SIZE = 100  # Stripe's maximum `limit`

# Stripe accepts only these three `reason` values; ours always travel in metadata.
_STRIPE_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

# Stripe metadata limits: 50 keys, keys up to 40 characters without square
# brackets (they would nest the form field), values up to 500 characters; an
# empty value deletes the key.
_METADATA = MetadataLimits(
    max_keys=50, key_max_chars=40, value_max_chars=500, forbidden_in_keys="[]"
)

# --------------------------------------------------------------------------
# Amounts: Stripe's unit is not always the ISO 4217 minor unit
# (docs.stripe.com/currencies: zero-decimal, three-decimal and special cases).
# --------------------------------------------------------------------------

# ISK and UGX have no minor unit in ISO 4217, but Stripe kept them two-decimal for
# backwards compatibility: 5 ISK travels as 500 and the last two digits must be 00.
_STRIPE_HUNDREDFOLD = frozenset({"ISK", "UGX"})
# MGA is two-decimal in ISO 4217 but zero-decimal at Stripe: only whole ariary.
_STRIPE_WHOLE_UNITS = frozenset({"MGA"})
# The three-decimal currencies Stripe documents; its card partners need the last
# digit to be 0, so 5.124 KWD cannot be refunded as such.
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# HUF and TWD are zero-decimal at Stripe for payouts only; charges and refunds take
# two decimals like ISO 4217, so they need nothing here. Everything else at Stripe
# is zero- or two-decimal exactly as in ISO 4217; other exponents (IQD, LYD with
# three, CLF and UYW with four, the UYI fund code) are refused rather than guessed.
_ISO_EXPONENTS_AS_AT_STRIPE = frozenset({0, 2})
_NOT_AT_STRIPE = frozenset({"UYI"})


class _NotRepresentable(Exception):
    """The amount cannot be expressed in Stripe's unit for its currency."""


def to_stripe_amount(money: Money) -> int:
    """Our ISO 4217 minor units to the integer Stripe expects for `amount`."""
    currency = money.currency
    if currency in _STRIPE_HUNDREDFOLD:
        return money.amount * 100
    if currency in _STRIPE_WHOLE_UNITS:
        if money.amount % 100:
            raise _NotRepresentable(f"Stripe takes {currency} in whole units only")
        return money.amount // 100
    if currency in _STRIPE_THREE_DECIMAL:
        if money.amount % 10:
            raise _NotRepresentable(f"Stripe needs {currency} amounts rounded to 0.010")
        return money.amount
    if currency in _NOT_AT_STRIPE or exponent(currency) not in _ISO_EXPONENTS_AS_AT_STRIPE:
        raise _NotRepresentable(f"Stripe does not document the unit of {currency}")
    return money.amount


def from_stripe_amount(amount: Any, currency: Any) -> Money | None:
    """Stripe's `amount`/`currency` pair as Money, or None when it cannot be read exactly."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        return None
    code = currency.upper()
    if not is_currency(code):
        return None
    if code in _STRIPE_HUNDREDFOLD:
        # Fractional amounts predate Stripe's whole-unit rule and have no ISO form.
        if amount % 100:
            return None
        amount //= 100
    elif code in _STRIPE_WHOLE_UNITS:
        amount *= 100
    try:
        return Money(amount, code)
    except DomainError:
        return None


# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

_STATES = {
    "pending": PseRefundState.PENDING,
    "requires_action": PseRefundState.PENDING,
    "succeeded": PseRefundState.SUCCEEDED,
    "failed": PseRefundState.FAILED,
    "canceled": PseRefundState.FAILED,
}

# Stripe gives a code only; these words help whoever picks the refund up.
_FAILURE_MESSAGES = {
    "expired_or_canceled_card": "The card can no longer receive refunds; pay out another way.",
    "lost_or_stolen_card": "The card was reported lost or stolen; pay out another way.",
    "charge_for_pending_refund_disputed": "The payment was disputed while the refund was pending.",
    "insufficient_funds": "The Stripe balance could not cover the refund.",
    "declined": "The card issuer or bank declined the refund.",
    "merchant_request": "The refund was canceled at the merchant's request.",
}


def refund_from_stripe(obj: Any) -> PseRefund | None:
    """Translate a Stripe refund object; None when it is not one we can read."""
    if not isinstance(obj, Mapping) or obj.get("object") != "refund":
        return None
    refund_id = obj.get("id")
    status = obj.get("status")
    if not isinstance(refund_id, str) or not refund_id or status not in _STATES:
        return None
    state = _STATES[status]
    failure_code = failure_message = None
    if state is PseRefundState.FAILED:
        reason = obj.get("failure_reason")
        if isinstance(reason, str) and reason:
            failure_code = reason
        else:
            failure_code = "canceled" if status == "canceled" else "unknown"
        failure_message = _FAILURE_MESSAGES.get(failure_code)
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=from_stripe_amount(obj.get("amount"), obj.get("currency")),
        reference=reference_in(obj),
        failure_code=failure_code,
        failure_message=failure_message,
        pse_payment_ids=ids_in(obj, "payment_intent", "charge"),
    )


# --------------------------------------------------------------------------
# Error envelope -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


_CARD_GONE = _Decline("payment_method_unavailable", offline=True)

# Stripe error codes that prove the refund was not made. Anything else stays
# unanswered: the service then asks Stripe instead of guessing.
#
# Research on "the payer can no longer be refunded": Stripe has no dedicated
# error code for a payment past its refund window (the generated list of error
# codes in the official SDK has none). Card refunds to expired cards usually
# succeed (the issuer routes them to the replacement card); when they cannot,
# Stripe accepts the refund and later fails it with `failure_reason`
# `expired_or_canceled_card` or `lost_or_stolen_card` (refund.failed webhook).
# The synchronous cases are the card codes below and a refusal whose message
# says the payment is "too old to be refunded" / past its "refund window"
# (reported for buy-now-pay-later methods with a 90-day window). Which code
# Stripe sends with that message is unconfirmed, so only `charge_not_refundable`
# carrying those words is treated as offline; other codes stay unanswered.
_DECLINES: Mapping[str, _Decline] = {
    "charge_already_refunded": _Decline("already_refunded"),
    "amount_too_large": _Decline("amount_exceeds_refundable"),
    "charge_disputed": _Decline("payment_disputed"),
    "refund_disputed_payment": _Decline("payment_disputed"),
    "balance_insufficient": _Decline("insufficient_balance", retriable=True),
    "charge_not_refundable": _Decline("not_refundable"),
    "expired_card": _CARD_GONE,
    "expired_or_canceled_card": _CARD_GONE,
    "lost_or_stolen_card": _CARD_GONE,
    "expired_payment_method": _CARD_GONE,
}
_REFUND_WINDOW_WORDS = ("too old", "refund window")
# A missing PaymentIntent/Charge proves nothing was refunded either.
_PAYMENT_PARAMS = frozenset({"payment_intent", "charge"})

# Stripe key formats (secret and restricted), also in the masked form it echoes.
_KEY_PATTERN = re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9*]+")


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

_SIGNATURE_HEADER = "stripe-signature"
# Events whose `data.object` is a refund. Before API version 2024-10-28 Stripe
# sends the `refund.*` ones only for refunds without a charge: a card refund
# changes (settles, fails, or fails after `succeeded` when the card account is
# closed) only through `charge.refund.updated`. The version an event is written
# in is the webhook endpoint's, not our pinned request version, so all are read.
_REFUND_EVENTS = frozenset(
    {"charge.refund.updated", "refund.created", "refund.updated", "refund.failed"}
)
# `data.object` is the charge; its `refunds` list only before 2022-11-15 or expanded.
_CHARGE_REFUNDED = "charge.refunded"


# `charge.dispute.created`, `.updated`, `.closed`, `.funds_withdrawn` and
# `.funds_reinstated`: every one has the dispute object in `data.object`.
_DISPUTE_EVENT_PREFIX = "charge.dispute."
_FUNDS_REINSTATED = "charge.dispute.funds_reinstated"

# The dispute object's `status` (API reference, "The Dispute object").
# `warning_*` is an inquiry (no funds withdrawn yet), `needs_response` and
# `under_review` a chargeback; `warning_closed` is an inquiry that ended
# without becoming one, and `prevented` (Visa RDR and the like) a dispute the
# issuer settled with a refund instead of a chargeback: both end the dispute
# without a decision against us.
_DISPUTE_STATUSES = {
    "warning_needs_response": DisputeStatus.OPEN,
    "warning_under_review": DisputeStatus.OPEN,
    "needs_response": DisputeStatus.OPEN,
    "under_review": DisputeStatus.OPEN,
    "won": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
    "warning_closed": DisputeStatus.CLOSED,
    "prevented": DisputeStatus.CLOSED,
}


def dispute_from_stripe(event_type: str, obj: Any) -> DisputeReport:
    """Translate the dispute object of a `charge.dispute.*` event (raises UnreadableDispute).

    `funds_reinstated` reports the dispute won while its object still reads
    open. It does not overrule an object that says `lost`: Stripe reinstates
    the partially refunded amount of a dispute it otherwise lost ("partially
    won", status `lost`), and taking that for a win would give back the whole
    amount the loss counted.
    """
    if not isinstance(obj, Mapping) or obj.get("object") != "dispute":
        raise UnreadableDispute("data.object is not a Stripe dispute object")
    status = dispute_status(obj.get("status"), _DISPUTE_STATUSES)
    if event_type == _FUNDS_REINSTATED and status is DisputeStatus.OPEN:
        status = DisputeStatus.WON
    evidence = obj.get("evidence_details")
    due_by = evidence.get("due_by") if isinstance(evidence, Mapping) else None
    return dispute_report(
        pse_dispute_id=obj.get("id"),
        status=status,
        amount=from_stripe_amount(obj.get("amount"), obj.get("currency")),
        reason=obj.get("reason"),
        # 0 when the bank takes no response: no deadline.
        evidence_due_by=unix_time(due_by, "evidence_details.due_by"),
        opened_at=unix_time(obj.get("created"), "created"),
        # Our payments are registered by PaymentIntent or by charge: both are named.
        pse_payment_ids=ids_in(obj, "charge", "payment_intent"),
    )


def _parse_signature_header(value: str) -> tuple[str, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>…]`; other schemes (v0: test-mode legacy) are ignored."""
    timestamp: str | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep or not key or not item or not item.isascii():
            raise InvalidWebhookSignature("malformed Stripe-Signature header")
        if key == "t":
            if timestamp is not None:
                raise InvalidWebhookSignature("malformed Stripe-Signature timestamp")
            timestamp = item
        elif key == "v1":
            signatures.append(item)
    if timestamp is None:
        raise InvalidWebhookSignature("Stripe-Signature has no timestamp")
    if not signatures:
        raise InvalidWebhookSignature("Stripe-Signature has no v1 signature")
    return timestamp, signatures


def _latest_refund_of_charge(charge: Any) -> Any:
    """The newest refund embedded in a charge, or None when the charge does not embed them.

    Since API version 2022-11-15 a charge carries `refunds` only when expanded.
    """
    if not isinstance(charge, Mapping):
        return None
    refunds = charge.get("refunds")
    if not isinstance(refunds, Mapping):
        return None
    items = refunds.get("data")
    if not isinstance(items, list) or not items:
        return None

    def created(item: Any) -> int:
        value = item.get("created") if isinstance(item, Mapping) else None
        return value if isinstance(value, int) else -1

    # Lists come newest first; `created` decides when they do not.
    return max(items, key=created)


def _payment_param(pse_payment_id: str) -> str:
    # Charges (`ch_`) and non-card payments (`py_`) are refunded by charge id.
    return "charge" if pse_payment_id.startswith(("ch_", "py_")) else "payment_intent"


class StripeGateway(RefundResourceGateway):
    """One Stripe account, in the domain's words."""

    provider = "stripe"
    key_pattern = _KEY_PATTERN
    refund_events = _REFUND_EVENTS | {_CHARGE_REFUNDED}
    dispute_event_prefix = _DISPUTE_EVENT_PREFIX

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._account.api_key}",
            "Stripe-Version": STRIPE_API_VERSION,
        }

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        try:
            amount = to_stripe_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        form = {
            _payment_param(submission.pse_payment_id): submission.pse_payment_id,
            "amount": str(amount),
            **{f"metadata[{k}]": v for k, v in metadata_for(submission, _METADATA).items()},
        }
        if submission.reason in _STRIPE_REASONS:
            form["reason"] = submission.reason
        return PseRequest(
            "POST",
            _REFUNDS_PATH,
            headers={"Idempotency-Key": submission.idempotency_key},
            form=form,
        )

    def _error_of(self, response: httpx.Response) -> PseError:
        error = error_envelope(response)
        return PseError(
            shown(error.get("code") or error.get("type")), shown(error.get("message")), error
        )

    def _in_flight(self, status: int, error: PseError) -> bool:
        # 409: the same key is still in flight. An idempotency error: the key
        # already stands for a request Stripe may have carried out.
        return (
            status == 409
            or error.detail.get("type") == "idempotency_error"
            or error.detail.get("code") == "idempotency_key_in_use"
        )

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | None:
        code = error.detail.get("code")
        if not isinstance(code, str):
            return None
        if code == "resource_missing" and error.detail.get("param") in _PAYMENT_PARAMS:
            return _Decline("payment_not_found")
        decline = _DECLINES.get(code)
        if decline is not None and code == "charge_not_refundable":
            message = str(error.detail.get("message") or "").lower()
            if any(words in message for words in _REFUND_WINDOW_WORDS):
                return _Decline(decline.code, offline=True)
        return decline

    def _error_log_fields(self, error: PseError) -> dict[str, Any]:
        return {"error_type": error.detail.get("type"), "error_code": error.detail.get("code")}

    # -- find -----------------------------------------------------------------

    def _read_refund(self, obj: Any) -> PseRefund:
        refund = refund_from_stripe(obj)
        if refund is None:
            raise UnreadableRefund("not a Stripe refund object")
        return refund

    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        return reference_in(obj)

    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str:
        return f"{_REFUNDS_PATH}/{quoted(refund_id)}"

    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered:
        payment_param = _payment_param(submission.pse_payment_id)
        return RefundListing(
            _REFUNDS_PATH, {payment_param: submission.pse_payment_id, "limit": _LIST_PAGE_SIZE}
        )

    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            return "refund list is not a Stripe list object"
        return cursor_page(body["data"], body.get("has_more"), params, "starting_after")

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        header = self._header(headers, _SIGNATURE_HEADER, "Stripe-Signature")
        timestamp, signatures = _parse_signature_header(header)
        # Stripe keys the HMAC with the whole `whsec_…` string, not a decoded form.
        return WebhookProof(
            header="Stripe-Signature v1",
            presented=[signature.encode("ascii") for signature in signatures],
            signed=timestamp.encode("ascii") + b"." + body,
            timestamp=unix_seconds(timestamp, "Stripe-Signature timestamp"),
            timestamp_name="Stripe-Signature timestamp",
        )

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        if event.get("object") != "event":
            raise InvalidWebhookPayload("body is not a Stripe event")
        event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
        if (
            not isinstance(event_id, str)
            or not event_id
            or not isinstance(event_type, str)
            or not isinstance(data, Mapping)
        ):
            raise InvalidWebhookPayload("Stripe event lacks id, type or data")
        return event_id, event_type

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund | None:
        obj = event["data"].get("object")
        if event_type == _CHARGE_REFUNDED:
            latest = _latest_refund_of_charge(obj)
            return None if latest is None else self._read_refund(latest)
        return self._read_refund(obj)

    def _event_dispute(self, event_type: str, event: Mapping[str, Any]) -> DisputeReport:
        return dispute_from_stripe(event_type, event["data"].get("object"))
