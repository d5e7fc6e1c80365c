"""Razorpay: refunds through `POST /v1/payments/{id}/refund`, look-ups through
`GET /v1/refunds/{id}` and `GET /v1/payments/{id}/refunds`, events through
signed webhooks.

Razorpay takes JSON with HTTP Basic auth (`key_id:key_secret`), answers JSON,
and reports errors in `{"error": {"code", "description", "source", "step",
"reason", "metadata", "field"}}`. Almost every refusal carries the same code,
`BAD_REQUEST_ERROR`; only the human-readable `description` tells them apart, so
the mapping below matches documented descriptions and leaves every other
answer unanswered rather than guessing.

Account settings: `api_key` is the key secret, `options["key_id"]` the key id
(`rzp_live_…` / `rzp_test_…`), `webhook_secrets` every webhook secret accepted
(the current one and, while rotating, the previous one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.adapters.pse.base import DeclineRule, PseAccount, ids_in
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
    basic_auth,
    error_envelope,
    metadata_for,
    minor_units,
    quoted,
    reference_in,
    said,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money, exponent
from app.domain.pse import (
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

KEY_ID_OPTION = "key_id"

_REFUNDS_PATH = "/v1/refunds"
_LIST_PAGE_SIZE = 100  # the largest `count` Razorpay accepts on list endpoints

# Normal speed only: "optimum" (instant) refunds carry a fee and can fall back
# to normal anyway; the service never asks for them.
_SPEED = "normal"

# `receipt`: "a unique identifier provided by you for your internal reference";
# Razorpay limits it to 40 characters. Our references (`rf_` + 27) fit; a longer
# one travels in notes only.
_RECEIPT_MAX_CHARS = 40

# Notes: at most 15 key-value pairs; keys and values of at most 255 characters
# (the API reference says 256, Razorpay's own error text says 255: the smaller wins).
_NOTES = MetadataLimits(max_keys=15, key_max_chars=255, value_max_chars=255)

# X-Refund-Idempotency: at least 10 characters of letters, digits, `-` and `_`.
# Razorpay documents no retention window for the key, so the look-up (not
# a resend) is what resolves an unanswered create.
_IDEMPOTENCY_HEADER = "X-Refund-Idempotency"
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{10,}")

# --------------------------------------------------------------------------
# Amounts: Razorpay takes "the smallest unit of the currency". It documents
# JPY as its zero-decimal currency and KWD, BHD and OMR as its three-decimal
# ones, where the last digit must be 0 (99.991 KWD cannot be sent, 99.990 can).
# Every two-decimal ISO 4217 currency travels as is. Other zero-, three- and
# four-decimal currencies have no documented subunit at Razorpay and are
# refused rather than risk an amount a hundred or a thousand times off.
# --------------------------------------------------------------------------

_ZERO_DECIMAL = frozenset({"JPY"})
_THREE_DECIMAL = frozenset({"KWD", "BHD", "OMR"})


class _NotRepresentable(Exception):
    """The amount cannot be expressed in Razorpay's unit for its currency."""


def _documented(currency: str) -> bool:
    return exponent(currency) == 2 or currency in _ZERO_DECIMAL or currency in _THREE_DECIMAL


def to_razorpay_amount(money: Money) -> int:
    """Our ISO 4217 minor units to the integer Razorpay expects for `amount`."""
    if not _documented(money.currency):
        raise _NotRepresentable(f"Razorpay does not document the subunit of {money.currency}")
    if money.currency in _THREE_DECIMAL and money.amount % 10:
        raise _NotRepresentable(f"Razorpay needs {money.currency} amounts rounded to 0.010")
    return money.amount


def from_razorpay_amount(amount: Any, currency: Any) -> Money | None:
    """Razorpay's `amount`/`currency` pair as Money, or None when it cannot be read exactly."""
    money = minor_units(amount, currency)
    return money if money is not None and _documented(money.currency) else None


# --------------------------------------------------------------------------
# Refund entity -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

# Razorpay's refund statuses: `pending` while it processes, `processed` (final,
# success) and `failed`. Anything else is not guessed at.
_STATES = {
    "pending": PseRefundState.PENDING,
    "processed": PseRefundState.SUCCEEDED,
    "failed": PseRefundState.FAILED,
}

# The refund entity carries no failure reason. Razorpay documents two causes:
# a normal refund on a payment older than six months, and an instant refund
# refused by the customer's bank or account.
FAILURE_CODE = "refund_failed"
_FAILURE_MESSAGE = (
    "Razorpay could not process the refund (for example a payment more than six months "
    "old or a refusal by the customer's bank); pay it out another way."
)


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    """Our reference: the `refund_id` note, else the receipt."""
    # Razorpay serialises empty notes as `[]`, not `{}`: `reference_in` reads only a mapping.
    return reference_in(obj, "notes") or said(obj.get("receipt"))


def refund_from_razorpay(obj: Any) -> PseRefund | None:
    """Translate a Razorpay refund entity; None when it is not one we can read."""
    if not isinstance(obj, Mapping) or obj.get("entity") != "refund":
        return None
    refund_id = obj.get("id")
    status = obj.get("status")
    if not isinstance(refund_id, str) or not refund_id or status not in _STATES:
        return None
    state = _STATES[status]
    failed = state is PseRefundState.FAILED
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=from_razorpay_amount(obj.get("amount"), obj.get("currency")),
        reference=_reference_of(obj),
        failure_code=FAILURE_CODE if failed else None,
        failure_message=_FAILURE_MESSAGE if failed else None,
        pse_payment_ids=ids_in(obj, "payment_id"),
    )


# --------------------------------------------------------------------------
# Error envelope -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    outcome: _Decline | str  # a str: Razorpay may hold the refund; unanswered, with this reason


def _rule(pattern: str, outcome: _Decline | str) -> _Rule:
    return _Rule(re.compile(pattern, re.IGNORECASE), outcome)


# Razorpay may hold our refund: never a decline, whatever else the text says.
MAY_HOLD_IT = "Razorpay may already hold this refund"
IN_FLIGHT = "a request with this idempotency key is still being processed"


_WINDOW_PASSED = _Decline("refund_window_passed", offline=True)

# Descriptions Razorpay sends with `BAD_REQUEST_ERROR` on a refund, first match
# wins. Sources: the create-refund API reference (its "Errors" list), the
# "Handle Refund Errors" guide, the idempotent-refund page, and the public
# error descriptions of Razorpay's API. Matching is on stable phrases, not on
# whole sentences, so a trailing full stop or a currency code does not matter.
_RULES: tuple[_Rule, ...] = (
    # The key already stands for a request Razorpay may have carried out
    # ("Different request with the same idempotency key has already been processed.").
    _rule(r"idempoten", MAY_HOLD_IT),
    # "Request failed because another payment operation is in progress": a refund
    # with our key may be the operation in progress.
    _rule(r"in progress", IN_FLIGHT),
    # A duplicate refund or receipt, or "Refund has already been processed":
    # Razorpay may well hold ours; the look-up tells.
    _rule(r"duplicate|already been processed", MAY_HOLD_IT),
    # "Payment is more than 6 months old, only instant refund is supported" and
    # "Refund is not supported by the bank because the payment is more than 6
    # months old": banks no longer take normal refunds for the payment. Razorpay
    # suggests an instant ("optimum") refund instead, which carries a fee and may
    # be refused too; the service does not send those, so the money goes back
    # outside Razorpay (offline payout), where ops may still choose an instant one.
    _rule(r"more than (?:6|six) months old", _WINDOW_PASSED),
    # "The payment has been fully refunded already".
    _rule(r"fully refunded", _Decline("already_refunded")),
    # "The refund amount provided is greater than amount captured", "… greater
    # than the unrefunded amount", "… exceeds the refundable amount", "The total
    # refund amount is greater than the refund payment amount".
    _rule(
        r"\b(?:greater than|more than|exceeds?)\b.{0,24}?"
        r"\b(?:refundable|unrefunded|captured|payment)\s+amount\b"
        r"|\bgreater than amount captured\b",
        _Decline("amount_exceeds_refundable"),
    ),
    # "Your account does not have enough balance to carry out the refund
    # operation. You can add funds …": passes once funds arrive.
    _rule(
        r"(?:not have enough|insufficient) balance",
        _Decline("insufficient_balance", retriable=True),
    ),
    # "The refund on this payment is blocked due to ongoing dispute investigation".
    _rule(r"dispute", _Decline("payment_disputed")),
    # "The payment status should be captured for action to be taken": an
    # authorized payment is voided by Razorpay itself after five days.
    _rule(r"should be captured|not (?:been )?captured", _Decline("payment_not_captured")),
    # "Refund is currently not supported for this payment method" and any answer
    # that the refund needs the payer's bank account: Razorpay cannot send the
    # money back to the payer; it must be paid out another way.
    _rule(
        r"partial refund is (?:currently )?not supported",
        _Decline("partial_refund_not_supported", offline=True),
    ),
    _rule(
        r"refund is (?:currently )?not supported for this payment method",
        _Decline("refund_not_supported", offline=True),
    ),
    _rule(
        r"refund.*\bbank account\b|\bbank account\b.*refund",
        _Decline("bank_account_required", offline=True),
    ),
    # "The amount must be at least INR 1.00".
    _rule(r"amount must be at least", _Decline("amount_below_minimum")),
    # "{payment_id} is not a valid id." / "The id provided does not exist": the
    # payment is unknown to this account, so nothing was refunded.
    _rule(r"is not a valid id|id provided does not exist", _Decline("payment_not_found")),
)

# Authentication failures Razorpay answers with 400 rather than 401 on some routes.
_AUTH_WORDS = re.compile(
    r"api key|api secret|authentication failed|provide your razorpay api key", re.IGNORECASE
)
_UNKNOWN_ID = re.compile(r"is not a valid id|id provided does not exist", re.IGNORECASE)
_BAD_REQUEST = "BAD_REQUEST_ERROR"

# Razorpay key ids (`rzp_live_…`, `rzp_test_…`), never echoed in our messages.
_KEY_PATTERN = re.compile(r"\brzp_(?:live|test)_[A-Za-z0-9]+")


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

_SIGNATURE_HEADER = "x-razorpay-signature"
# Unique per event and the same on every redelivery (Razorpay's webhook best
# practices); the body itself has no event id.
_EVENT_ID_HEADER = "x-razorpay-event-id"
_EVENT_ID_MAX_CHARS = 255
_REFUND_EVENTS = frozenset({"refund.created", "refund.processed", "refund.failed"})
# `payment.dispute.created`, `.under_review`, `.action_required`, `.won`, `.lost`
# and `.closed`: the dispute entity in `payload.dispute.entity` (the payment's
# beside it, in `payload.payment.entity`). Its `status`, not the event name, says
# where the dispute stands, as for refunds.
_DISPUTE_EVENT_PREFIX = "payment.dispute."
# The dispute entity's `status` (API reference, "Disputes: entity"). `open` is a
# new dispute (also after `action_required`), `under_review` one contested with
# evidence; `closed` one that ended without a decision (the customer was given
# the transaction details, or refunded: that money left as our refund).
_DISPUTE_STATUSES = {
    "open": DisputeStatus.OPEN,
    "under_review": DisputeStatus.OPEN,
    "won": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
    "closed": DisputeStatus.CLOSED,
}


def _entity(payload: Any, name: str) -> Any:
    wrapper = payload.get(name) if isinstance(payload, Mapping) else None
    return wrapper.get("entity") if isinstance(wrapper, Mapping) else None


def dispute_from_razorpay(event: Mapping[str, Any]) -> DisputeReport:
    """Translate the dispute entity of a `payment.dispute.*` event (raises UnreadableDispute)."""
    payload = event.get("payload")
    obj = _entity(payload, "dispute")
    if not isinstance(obj, Mapping) or obj.get("entity") != "dispute":
        raise UnreadableDispute("payload.dispute.entity is not a Razorpay dispute entity")
    # The dispute names its payment; the payment entity beside it must agree.
    named = ids_in(obj, "payment_id")
    payment = _entity(payload, "payment")
    beside = ids_in(payment, "id") if isinstance(payment, Mapping) else ()
    if named and beside and named != beside:
        raise UnreadableDispute(f"dispute of {named[0]} delivered with payment {beside[0]}")
    return dispute_report(
        pse_dispute_id=obj.get("id"),
        status=dispute_status(obj.get("status"), _DISPUTE_STATUSES),
        amount=from_razorpay_amount(obj.get("amount"), obj.get("currency")),
        reason=said(obj.get("reason_code")) or said(obj.get("reason_description")),
        evidence_due_by=unix_time(obj.get("respond_by"), "respond_by"),
        opened_at=unix_time(obj.get("created_at"), "created_at"),
        pse_payment_ids=named or beside,
    )


def derived_event_id(body: bytes) -> str:
    """A stable event id from the raw body, for deliveries without X-Razorpay-Event-Id.

    Razorpay redelivers an event with the same body, so redeliveries
    deduplicate; distinct events differ in their type, entity or `created_at`."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class RazorpayGateway(RefundResourceGateway):
    """One Razorpay account, in the domain's words."""

    provider = "razorpay"
    key_pattern = _KEY_PATTERN
    unrecognised_event = "unrecognised_answer"
    # 409 is Razorpay's answer while a request with the same key is still processed.
    in_flight_note = IN_FLIGHT
    refund_events = _REFUND_EVENTS
    dispute_event_prefix = _DISPUTE_EVENT_PREFIX

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        key_id = account.options.get(KEY_ID_OPTION, "")
        if not key_id:
            raise ValueError(
                f"accounts.{account.name}.options.{KEY_ID_OPTION}: Razorpay needs the key id "
                "next to the key secret (api_key)"
            )
        super().__init__(account, http)
        self._authorization = basic_auth(key_id, account.api_key)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json"}

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        try:
            amount = to_razorpay_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        if not _IDEMPOTENCY_KEY.fullmatch(submission.idempotency_key):
            # Razorpay would refuse the header; sending without it could refund twice.
            return Declined(
                code="idempotency_key_not_supported",
                message="Razorpay needs an idempotency key of 10+ characters [A-Za-z0-9_-]",
            )
        body: dict[str, Any] = {"amount": amount, "speed": _SPEED}
        if len(submission.reference) <= _RECEIPT_MAX_CHARS:
            body["receipt"] = submission.reference
        body["notes"] = metadata_for(submission, _NOTES)
        return PseRequest(
            "POST",
            f"/v1/payments/{quoted(submission.pse_payment_id)}/refund",
            headers={_IDEMPOTENCY_HEADER: submission.idempotency_key},
            json=body,
        )

    def _error_of(self, response: httpx.Response) -> PseError:
        error = error_envelope(response)
        return PseError(said(error.get("code")), said(error.get("description")), error)

    def _refuses_credentials(self, status: int, error: PseError) -> bool:
        return status in (401, 403) or (
            status == 400 and bool(_AUTH_WORDS.search(error.message or ""))
        )

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | SubmitResult | None:
        """The first rule matching a `BAD_REQUEST_ERROR` description; None: unrecognised."""
        if status != 400 or error.code != _BAD_REQUEST or not error.message:
            return None
        for rule in _RULES:
            if rule.pattern.search(error.message):
                if isinstance(rule.outcome, str):
                    return self._unanswered(status, error, rule.outcome)
                return rule.outcome
        return None

    def _error_log_fields(self, error: PseError) -> dict[str, Any]:
        return {
            "error_code": error.detail.get("code"),
            "error_reason": error.detail.get("reason"),
            "error_field": error.detail.get("field"),
        }

    # -- find -----------------------------------------------------------------

    def _read_refund(self, obj: Any) -> PseRefund:
        refund = refund_from_razorpay(obj)
        if refund is None:
            raise UnreadableRefund("not a Razorpay refund entity")
        return refund

    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        return _reference_of(obj)

    def _no_such_refund(self, response: httpx.Response) -> bool:
        if response.status_code == 404:
            return True
        if response.status_code != 400:
            return False
        error = self._error_of(response)
        return error.code == _BAD_REQUEST and bool(_UNKNOWN_ID.search(error.message or ""))

    def _mismatch(self, submission: RefundSubmission, obj: Any, refund: PseRefund) -> str | None:
        payment_id = obj.get("payment_id") if isinstance(obj, Mapping) else None
        if payment_id is not None and payment_id != submission.pse_payment_id:
            return f"refund {refund.pse_refund_id} belongs to another payment"
        return super()._mismatch(submission, obj, refund)

    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str:
        return f"{_REFUNDS_PATH}/{quoted(refund_id)}"

    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered:
        path = f"/v1/payments/{quoted(submission.pse_payment_id)}/refunds"
        return RefundListing(path, {"count": _LIST_PAGE_SIZE, "skip": 0})

    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        items = body.get("items") if isinstance(body, Mapping) else None
        if (
            not isinstance(body, Mapping)
            or body.get("entity") != "collection"
            or not isinstance(items, list)
        ):
            return "refund list is not a Razorpay collection"
        # Newest first, offset paging: a refund created meanwhile shifts older
        # ones to later pages (seen twice at worst, never skipped).
        if len(items) < _LIST_PAGE_SIZE:
            return ListPage(items)
        return ListPage(items, following={**params, "skip": params["skip"] + len(items)})

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        """X-Razorpay-Signature: hex HMAC-SHA256 of the raw body, keyed with the
        webhook secret.

        No timestamp to hold against `now` and the account's tolerance: replays
        are absorbed by the event-id dedupe and by statuses that only move forward.
        """
        candidate = self._header(headers, _SIGNATURE_HEADER, "X-Razorpay-Signature").strip()
        if not candidate.isascii():
            raise InvalidWebhookSignature("malformed X-Razorpay-Signature header")
        return WebhookProof(
            header="X-Razorpay-Signature", presented=[candidate.encode("ascii")], signed=body
        )

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        if event.get("entity") != "event":
            raise InvalidWebhookPayload("body is not a Razorpay event")
        event_type = event.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("Razorpay event has no type")
        value = (headers.get(_EVENT_ID_HEADER) or "").strip()
        if value and len(value) <= _EVENT_ID_MAX_CHARS:
            return value, event_type
        return derived_event_id(body), event_type

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund:
        return self._read_refund(_entity(event.get("payload"), "refund"))

    def _event_dispute(self, event_type: str, event: Mapping[str, Any]) -> DisputeReport:
        return dispute_from_razorpay(event)
