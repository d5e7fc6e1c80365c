"""Stripe: refunds through `POST/GET /v1/refunds`, events through signed webhooks.

Stripe takes form-encoded bodies, answers JSON, and reports errors in the
envelope `{"error": {"type", "code", "message", "param"}}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from app.adapters.pse.base import (
    DeclineRule,
    PseAccount,
    PseNoAnswer,
    RetryingHttp,
    answer_summary,
    ids_in,
    json_or_none,
    ours_among,
    scrubbed,
    verify_webhook,
)
from app.domain.errors import DomainError
from app.domain.money import Money, exponent, is_currency
from app.domain.ports import PseGateway
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    PseRefund,
    PseRefundState,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

log = structlog.get_logger("app.pse.stripe")

# Pinned so a change of the account's default API version cannot reshape answers.
STRIPE_API_VERSION = "2024-06-20"

_REFUNDS_PATH = "/v1/refunds"
_LIST_PAGE_SIZE = 100  # Stripe's maximum `limit`
_MAX_LIST_PAGES = 20

# Stripe accepts only these three `reason` values; ours always travel in metadata.
_STRIPE_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

# Stripe metadata limits: 50 keys, keys up to 40 characters without square
# brackets, values up to 500 characters; an empty value deletes the key.
_METADATA_MAX_KEYS = 50
_METADATA_KEY_MAX_CHARS = 40
_METADATA_VALUE_MAX_CHARS = 500
_REFERENCE_KEY = "refund_id"
_REASON_KEY = "reason"

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


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        reference = metadata.get(_REFERENCE_KEY)
        if isinstance(reference, str) and reference:
            return reference
    return None


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
        reference=_reference_of(obj),
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


def _parse_signature_header(value: str) -> tuple[str, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>…]`; other schemes (v0: test-mode legacy) are ignored."""
    timestamp: str | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep or not key or not item or not item.isascii():
            raise InvalidWebhookSignature("malformed Stripe-Signature header")
        if key == "t":
            if timestamp is not None or not item.isdigit():
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


class StripeGateway(PseGateway):
    """One Stripe account, in the domain's words."""

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)

    # -- create ---------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        try:
            amount = to_stripe_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        form = {
            self._payment_param(submission.pse_payment_id): submission.pse_payment_id,
            "amount": str(amount),
            **self._metadata_fields(submission),
        }
        if submission.reason in _STRIPE_REASONS:
            form["reason"] = submission.reason
        headers = {**self._headers(), "Idempotency-Key": submission.idempotency_key}
        try:
            response = await self._http.send("POST", _REFUNDS_PATH, headers=headers, data=form)
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        return self._create_answer(response)

    def _create_answer(self, response: httpx.Response) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            refund = refund_from_stripe(json_or_none(response))
            if refund is None:
                return Unanswered(f"HTTP {status} without a recognisable refund object")
            return Accepted(refund)
        if status in (401, 403):
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(_error_of(response).get("message") or f"HTTP {status}"),
            )
        if status == 409:
            # Stripe's answer while the same idempotency key is still in flight.
            return Unanswered(self._describe(response))
        if not 400 <= status < 500:
            return Unanswered(self._describe(response))
        error = _error_of(response)
        code = error.get("code")
        if error.get("type") == "idempotency_error" or code == "idempotency_key_in_use":
            # The key already stands for a request Stripe may have carried out.
            return Unanswered(self._describe(response))
        decline = self._decline_for(error)
        if decline is None:
            log.warning(
                "pse.stripe.unrecognised_error",
                pse_account=self._account.name,
                status_code=status,
                error_type=error.get("type"),
                error_code=code,
            )
            return Unanswered(self._describe(response))
        return Declined(
            code=decline.code,
            message=self._safe(error.get("message") or str(code)),
            offline=decline.offline,
            retriable=decline.retriable,
        )

    @staticmethod
    def _decline_for(error: Mapping[str, Any]) -> _Decline | None:
        code = error.get("code")
        if not isinstance(code, str):
            return None
        if code == "resource_missing" and error.get("param") in _PAYMENT_PARAMS:
            return _Decline("payment_not_found")
        decline = _DECLINES.get(code)
        if decline is not None and code == "charge_not_refundable":
            message = str(error.get("message") or "").lower()
            if any(words in message for words in _REFUND_WINDOW_WORDS):
                return _Decline(decline.code, offline=True)
        return decline

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # Stripe has no look-up by idempotency key, so existence is proven by
        # listing the payment's refunds and matching our reference in metadata.
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its Stripe id; None when Stripe says there is no such refund."""
        path = f"{_REFUNDS_PATH}/{quote(refund_id, safe='')}"
        try:
            response = await self._http.send("GET", path, headers=self._headers())
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            return Unanswered(self._describe(response))
        refund = refund_from_stripe(json_or_none(response))
        if refund is None:
            return Unanswered(f"HTTP {response.status_code} without a recognisable refund object")
        if refund.reference is not None and refund.reference != submission.reference:
            return Unanswered(f"refund {refund_id} carries another reference")
        return Accepted(refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        params: dict[str, Any] = {
            self._payment_param(submission.pse_payment_id): submission.pse_payment_id,
            "limit": _LIST_PAGE_SIZE,
        }
        mine: list[PseRefund] = []
        for _ in range(_MAX_LIST_PAGES):
            try:
                response = await self._http.send(
                    "GET", _REFUNDS_PATH, headers=self._headers(), params=params
                )
            except PseNoAnswer as exc:
                return Unanswered(exc.reason)
            if not 200 <= response.status_code < 300:
                return Unanswered(self._describe(response))
            page = json_or_none(response)
            if not isinstance(page, Mapping) or not isinstance(page.get("data"), list):
                return Unanswered("refund list is not a Stripe list object")
            items: list[Any] = page["data"]
            for item in items:
                if isinstance(item, Mapping) and _reference_of(item) == submission.reference:
                    refund = refund_from_stripe(item)
                    if refund is None:
                        return Unanswered("matching refund is not a recognisable refund object")
                    mine.append(refund)
            has_more = page.get("has_more")
            if has_more is False:
                # Every page is read: the newest match may be a failed one while
                # an older one under the same reference paid the customer.
                return ours_among(
                    mine, pse_account=self._account.name, reference=submission.reference
                )
            last = items[-1] if items else None
            cursor = last.get("id") if isinstance(last, Mapping) else None
            if has_more is not True or not isinstance(cursor, str):
                return Unanswered("refund list cannot be followed to its end")
            params["starting_after"] = cursor
        return Unanswered(f"more than {_MAX_LIST_PAGES} pages of refunds for the payment")

    # -- webhooks -------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        self._verify_signature(headers.get(_SIGNATURE_HEADER), body, now)
        try:
            event = json.loads(body)
        except ValueError:
            raise InvalidWebhookPayload("body is not JSON") from None
        if not isinstance(event, Mapping) or event.get("object") != "event":
            raise InvalidWebhookPayload("body is not a Stripe event")
        event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
        if (
            not isinstance(event_id, str)
            or not event_id
            or not isinstance(event_type, str)
            or not isinstance(data, Mapping)
        ):
            raise InvalidWebhookPayload("Stripe event lacks id, type or data")
        obj = data.get("object")
        refund: PseRefund | None = None
        if event_type in _REFUND_EVENTS:
            refund = refund_from_stripe(obj)
            if refund is None:
                raise InvalidWebhookPayload(f"{event_type} does not carry a readable refund")
        elif event_type == _CHARGE_REFUNDED:
            latest = _latest_refund_of_charge(obj)
            if latest is not None:
                refund = refund_from_stripe(latest)
                if refund is None:
                    raise InvalidWebhookPayload("charge.refunded carries an unreadable refund")
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify_signature(self, header: str | None, body: bytes, now: datetime) -> None:
        if not header:
            raise InvalidWebhookSignature("missing Stripe-Signature header")
        timestamp, signatures = _parse_signature_header(header)
        signed = timestamp.encode("ascii") + b"." + body
        # Stripe keys the HMAC with the whole `whsec_…` string, not a decoded form.
        verify_webhook(
            self._account,
            [signature.encode("ascii") for signature in signatures],
            lambda key: hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii"),
            header="Stripe-Signature v1",
        )
        if abs(now.timestamp() - int(timestamp)) > self._account.webhook_tolerance_seconds:
            raise InvalidWebhookSignature("Stripe-Signature timestamp outside the tolerance")

    # -- helpers --------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._account.api_key}",
            "Stripe-Version": STRIPE_API_VERSION,
        }

    @staticmethod
    def _payment_param(pse_payment_id: str) -> str:
        # Charges (`ch_`) and non-card payments (`py_`) are refunded by charge id.
        return "charge" if pse_payment_id.startswith(("ch_", "py_")) else "payment_intent"

    @staticmethod
    def _metadata_fields(submission: RefundSubmission) -> dict[str, str]:
        fields = {
            f"metadata[{_REFERENCE_KEY}]": submission.reference,
            f"metadata[{_REASON_KEY}]": submission.reason[:_METADATA_VALUE_MAX_CHARS],
        }
        for key, value in submission.metadata.items():
            if len(fields) >= _METADATA_MAX_KEYS:
                break
            # Our own keys win; over-long or bracketed keys cannot be sent safely
            # (cutting them could merge two keys), and an empty value would delete.
            if (
                key in (_REFERENCE_KEY, _REASON_KEY)
                or not key
                or len(key) > _METADATA_KEY_MAX_CHARS
                or "[" in key
                or "]" in key
                or not value
            ):
                continue
            fields[f"metadata[{key}]"] = str(value)[:_METADATA_VALUE_MAX_CHARS]
        return fields

    def _describe(self, response: httpx.Response) -> str:
        error = _error_of(response)
        label = error.get("code") or error.get("type")
        return self._safe(answer_summary(response.status_code, label, error.get("message")))

    def _safe(self, text: Any) -> str:
        """Stripe echoes keys (masked or not) in some messages: never pass them on."""
        return scrubbed(text, (self._account.api_key,), _KEY_PATTERN)


def _error_of(response: httpx.Response) -> Mapping[str, Any]:
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) else {}
