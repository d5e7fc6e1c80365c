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

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
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

log = structlog.get_logger("app.pse.razorpay")

KEY_ID_OPTION = "key_id"

_REFUNDS_PATH = "/v1/refunds"
_LIST_PAGE_SIZE = 100  # the largest `count` Razorpay accepts on list endpoints
_MAX_LIST_PAGES = 20

# Normal speed only: "optimum" (instant) refunds carry a fee and can fall back
# to normal anyway; the service never asks for them.
_SPEED = "normal"

# `receipt`: "a unique identifier provided by you for your internal reference";
# Razorpay limits it to 40 characters. Our references (`rf_` + 27) fit; a longer
# one travels in notes only.
_RECEIPT_MAX_CHARS = 40

# Notes: at most 15 key-value pairs; keys and values of at most 255 characters
# (the API reference says 256, Razorpay's own error text says 255: the smaller wins).
_NOTES_MAX_KEYS = 15
_NOTE_MAX_CHARS = 255
_REFERENCE_KEY = "refund_id"
_REASON_KEY = "reason"

# X-Refund-Idempotency: at least 10 characters of letters, digits, `-` and `_`.
# Razorpay documents no retention window for the key, so the look-up below (not
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
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        return None
    code = currency.upper()
    if not is_currency(code) or not _documented(code):
        return None
    try:
        return Money(amount, code)
    except DomainError:
        return None


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


def _notes_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    # Razorpay serialises empty notes as `[]`, not `{}`.
    notes = obj.get("notes")
    return notes if isinstance(notes, Mapping) else {}


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    """Our reference: the `refund_id` note, else the receipt."""
    for value in (_notes_of(obj).get(_REFERENCE_KEY), obj.get("receipt")):
        if isinstance(value, str) and value:
            return value
    return None


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


def _error_of(response: httpx.Response) -> Mapping[str, Any]:
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) else {}


def _description_of(error: Mapping[str, Any]) -> str:
    description = error.get("description")
    return description if isinstance(description, str) else ""


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

_SIGNATURE_HEADER = "x-razorpay-signature"
# Unique per event and the same on every redelivery (Razorpay's webhook best
# practices); the body itself has no event id.
_EVENT_ID_HEADER = "x-razorpay-event-id"
_EVENT_ID_MAX_CHARS = 255
_REFUND_EVENTS = frozenset({"refund.created", "refund.processed", "refund.failed"})


def derived_event_id(body: bytes) -> str:
    """A stable event id from the raw body, for deliveries without X-Razorpay-Event-Id.

    Razorpay redelivers an event with the same body, so redeliveries
    deduplicate; distinct events differ in their type, entity or `created_at`."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class RazorpayGateway(PseGateway):
    """One Razorpay account, in the domain's words."""

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        key_id = account.options.get(KEY_ID_OPTION, "")
        if not key_id:
            raise ValueError(
                f"accounts.{account.name}.options.{KEY_ID_OPTION}: Razorpay needs the key id "
                "next to the key secret (api_key)"
            )
        self._account = account
        self._http = RetryingHttp(account, http)
        credentials = f"{key_id}:{account.api_key}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode("ascii")

    # -- create ---------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
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
        body["notes"] = self._notes(submission)
        headers = {**self._headers(), _IDEMPOTENCY_HEADER: submission.idempotency_key}
        path = f"/v1/payments/{quote(submission.pse_payment_id, safe='')}/refund"
        try:
            response = await self._http.send("POST", path, headers=headers, json=body)
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        return self._create_answer(response)

    def _create_answer(self, response: httpx.Response) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            refund = refund_from_razorpay(json_or_none(response))
            if refund is None:
                return Unanswered(f"HTTP {status} without a recognisable refund entity")
            return Accepted(refund)
        error = _error_of(response)
        description = _description_of(error)
        if status in (401, 403) or (status == 400 and _AUTH_WORDS.search(description)):
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(description or f"HTTP {status}"),
            )
        if status == 409:
            # Razorpay's answer while a request with the same key is still processed.
            return Unanswered(f"{IN_FLIGHT}: {self._describe(response)}")
        outcome = self._outcome_for(status, error)
        if isinstance(outcome, str):
            return Unanswered(f"{outcome}: {self._describe(response)}")
        if outcome is None:
            log.warning(
                "pse.razorpay.unrecognised_answer",
                pse_account=self._account.name,
                status_code=status,
                error_code=error.get("code"),
                error_reason=error.get("reason"),
                error_field=error.get("field"),
            )
            return Unanswered(self._describe(response))
        return Declined(
            code=outcome.code,
            message=self._safe(description),
            offline=outcome.offline,
            retriable=outcome.retriable,
        )

    @staticmethod
    def _outcome_for(status: int, error: Mapping[str, Any]) -> _Decline | str | None:
        """The first rule matching a `BAD_REQUEST_ERROR` description; None: unrecognised."""
        if status != 400 or error.get("code") != _BAD_REQUEST:
            return None
        description = _description_of(error)
        if not description:
            return None
        for rule in _RULES:
            if rule.pattern.search(description):
                return rule.outcome
        return None

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # Razorpay has no look-up by idempotency key: existence is proven by
        # listing the payment's refunds and matching our reference (notes/receipt).
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its Razorpay id; None when Razorpay says there is no such refund."""
        path = f"{_REFUNDS_PATH}/{quote(refund_id, safe='')}"
        try:
            response = await self._http.send("GET", path, headers=self._headers())
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if self._is_unknown_id(response):
            return None
        if not 200 <= response.status_code < 300:
            return Unanswered(self._describe(response))
        body = json_or_none(response)
        refund = refund_from_razorpay(body)
        if refund is None:
            return Unanswered(f"HTTP {response.status_code} without a recognisable refund entity")
        payment_id = body.get("payment_id") if isinstance(body, Mapping) else None
        if payment_id is not None and payment_id != submission.pse_payment_id:
            return Unanswered(f"refund {refund_id} belongs to another payment")
        if refund.reference is not None and refund.reference != submission.reference:
            return Unanswered(f"refund {refund_id} carries another reference")
        return Accepted(refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        path = f"/v1/payments/{quote(submission.pse_payment_id, safe='')}/refunds"
        mine: list[PseRefund] = []
        skip = 0
        for _ in range(_MAX_LIST_PAGES):
            params = {"count": _LIST_PAGE_SIZE, "skip": skip}
            try:
                response = await self._http.send(
                    "GET", path, headers=self._headers(), params=params
                )
            except PseNoAnswer as exc:
                return Unanswered(exc.reason)
            if not 200 <= response.status_code < 300:
                # Including "The id provided does not exist" for the payment: a
                # misconfigured account would otherwise pass for proof of absence.
                return Unanswered(self._describe(response))
            page = json_or_none(response)
            items = page.get("items") if isinstance(page, Mapping) else None
            if (
                not isinstance(page, Mapping)
                or page.get("entity") != "collection"
                or not isinstance(items, list)
            ):
                return Unanswered("refund list is not a Razorpay collection")
            for item in items:
                if isinstance(item, Mapping) and _reference_of(item) == submission.reference:
                    refund = refund_from_razorpay(item)
                    if refund is None:
                        return Unanswered("matching refund is not a recognisable refund entity")
                    mine.append(refund)
            # Newest first, offset paging: a refund created meanwhile shifts older
            # ones to later pages (seen twice at worst, never skipped).
            if len(items) < _LIST_PAGE_SIZE:
                return self._pick(submission, mine)
            skip += len(items)
        return Unanswered(f"more than {_MAX_LIST_PAGES} pages of refunds for the payment")

    def _pick(self, submission: RefundSubmission, mine: list[PseRefund]) -> LookupResult:
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    @staticmethod
    def _is_unknown_id(response: httpx.Response) -> bool:
        if response.status_code == 404:
            return True
        if response.status_code != 400:
            return False
        error = _error_of(response)
        return error.get("code") == _BAD_REQUEST and bool(
            _UNKNOWN_ID.search(_description_of(error))
        )

    # -- webhooks -------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        # Razorpay signs the body only: there is no timestamp to hold against
        # `now` and the account's tolerance. Replays are absorbed by the event-id
        # dedupe and by statuses that only move forward.
        self._verify_signature(headers.get(_SIGNATURE_HEADER), body)
        try:
            event = json.loads(body)
        except ValueError:
            raise InvalidWebhookPayload("body is not JSON") from None
        if not isinstance(event, Mapping) or event.get("entity") != "event":
            raise InvalidWebhookPayload("body is not a Razorpay event")
        event_type = event.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("Razorpay event has no type")
        event_id = self._event_id(headers, body)
        if event_type not in _REFUND_EVENTS:
            return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=None)
        payload = event.get("payload")
        wrapper = payload.get("refund") if isinstance(payload, Mapping) else None
        entity = wrapper.get("entity") if isinstance(wrapper, Mapping) else None
        refund = refund_from_razorpay(entity)
        if refund is None:
            raise InvalidWebhookPayload(f"{event_type} does not carry a readable refund")
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify_signature(self, header: str | None, body: bytes) -> None:
        """X-Razorpay-Signature: hex HMAC-SHA256 of the raw body, keyed with the
        webhook secret. Every configured secret is tried (rotation)."""
        if not header:
            raise InvalidWebhookSignature("missing X-Razorpay-Signature header")
        candidate = header.strip()
        if not candidate.isascii():
            raise InvalidWebhookSignature("malformed X-Razorpay-Signature header")
        verify_webhook(
            self._account,
            [candidate.encode("ascii")],
            lambda key: hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii"),
            header="X-Razorpay-Signature",
        )

    @staticmethod
    def _event_id(headers: Mapping[str, str], body: bytes) -> str:
        value = (headers.get(_EVENT_ID_HEADER) or "").strip()
        if value and len(value) <= _EVENT_ID_MAX_CHARS:
            return value
        return derived_event_id(body)

    # -- helpers --------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json"}

    @staticmethod
    def _notes(submission: RefundSubmission) -> dict[str, str]:
        notes = {
            _REFERENCE_KEY: submission.reference[:_NOTE_MAX_CHARS],
            _REASON_KEY: submission.reason[:_NOTE_MAX_CHARS],
        }
        for key, value in submission.metadata.items():
            if len(notes) >= _NOTES_MAX_KEYS:
                break
            # Our own keys win; over-long keys are dropped (cutting them could
            # merge two keys), empty values carry nothing.
            if key in notes or not key or len(key) > _NOTE_MAX_CHARS or not value:
                continue
            notes[key] = str(value)[:_NOTE_MAX_CHARS]
        return notes

    def _describe(self, response: httpx.Response) -> str:
        error = _error_of(response)
        code = error.get("code")
        return self._safe(
            answer_summary(
                response.status_code,
                code if isinstance(code, str) else None,
                _description_of(error),
            )
        )

    def _safe(self, text: Any) -> str:
        """Never pass credentials on, whatever an answer echoes."""
        return scrubbed(text, (self._account.api_key, *self._account.webhook_secrets), _KEY_PATTERN)
