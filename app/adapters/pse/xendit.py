"""Xendit: refunds through `POST/GET /refunds`, events through callback-token webhooks.

Xendit takes and answers JSON, authenticates with HTTP Basic (the secret key as
user, an empty password) and reports errors as `{"error_code", "message"}`.

What the public API reference and the official SDKs (xendit-python, xendit-go,
xendit-node, xendit-php, all generated from the same OpenAPI document) say, and
what this adapter does with it:

- `POST /refunds` takes `payment_request_id` (Payments API, ids `pr-<uuid>`) or
  `invoice_id` (Invoices / Payment Links, 24 hex characters: a MongoDB ObjectId
  such as `65fc7522ff846905c2fc1c8d`), plus `reference_id` (1-255 characters),
  `amount`, `currency`, `reason` and `metadata` (up to 50 keys, keys up to 40
  characters, values up to 500). Our idempotency key travels in the
  `idempotency-key` header. Other Xendit ids (`py-…` of the v3 Payments API,
  refunded through `/v3/refunds` with an `api-version` header; channel-level ids
  such as `ddpy-…` or `ewc_…`) are not what these two fields take, so they are
  refused here before anything is sent.
- Amounts are numbers in MAJOR units (`"amount": 10000` is Rp10,000). See
  `to_xendit_amount` for the currency rules.
- The refund object carries `id` (`rfd-<uuid>`), `status` (PENDING, SUCCEEDED,
  FAILED, CANCELLED), `failure_code`, `reference_id`, `refund_fee_amount`…
- Look-up: `GET /refunds/{id}`, and `GET /refunds?payment_request_id=` (or
  `invoice_id=`) answering `{"data": [...], "has_more": bool}`, paged with
  `after_id`. Xendit has no look-up by idempotency key; our reference is matched
  in `reference_id` (and in `metadata.refund_id`, which we also set).
- Webhooks carry a static `x-callback-token` header (no signature over the body,
  no timestamp) and the envelope `{"event", "business_id", "created", "data"}`
  with the refund object in `data`. There is no event id in the payload, and
  `created` is the time of the delivery attempt, so the event id is derived from
  the envelope without `created` (see `_derived_event_id`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
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
    json_object,
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

log = structlog.get_logger("app.pse.xendit")

_REFUNDS_PATH = "/refunds"
_MAX_LIST_PAGES = 20  # pages of Xendit's default size; a payment has far fewer refunds

# `account.options` keys.
# xenPlatform: refunds of a sub-account's payments are made on its behalf.
FOR_USER_ID_OPTION = "for_user_id"

# --------------------------------------------------------------------------
# Payment ids
# --------------------------------------------------------------------------

_PAYMENT_REQUEST_PREFIX = "pr-"
_INVOICE_ID = re.compile(r"[0-9a-fA-F]{24}")


def payment_field(pse_payment_id: str) -> str | None:
    """The body/query field that names this payment, or None for an id we cannot refund."""
    if pse_payment_id.startswith(_PAYMENT_REQUEST_PREFIX) and len(pse_payment_id) > 3:
        return "payment_request_id"
    if _INVOICE_ID.fullmatch(pse_payment_id):
        return "invoice_id"
    return None


# --------------------------------------------------------------------------
# Amounts: Xendit takes major units
# --------------------------------------------------------------------------

# The currencies the refund reference lists for Xendit's own markets (a later
# revision enumerates every ISO code; its rules for those are not documented).
# Others are refused rather than guessed.
_XENDIT_CURRENCIES = frozenset("IDR PHP VND THB SGD MYR USD HKD AUD GBP EUR JPY MXN".split())
# IDR has two decimals in ISO 4217, but the sen is out of use: every IDR amount in
# Xendit's reference, requests and answers alike, is whole rupiah (`10000` is
# Rp10,000), and nothing documents sen being accepted. An IDR amount with sen is
# therefore refused instead of rounded. Zero-decimal currencies (VND, JPY) are
# whole by construction. Two-decimal currencies such as PHP keep their decimals
# (the amount is a JSON number): 1499.50 PHP travels as 1499.5.
_WHOLE_UNITS_ONLY = frozenset({"IDR"})
# A float carries 15 significant digits exactly; beyond that a JSON number
# could be read back as another amount.
_MAX_SIGNIFICANT_DIGITS = 15


class _NotRepresentable(Exception):
    """The amount cannot be expressed in Xendit's unit for its currency."""


def to_xendit_amount(money: Money) -> int | float:
    """Our ISO 4217 minor units to the JSON number Xendit expects in `amount`."""
    currency = money.currency
    if currency not in _XENDIT_CURRENCIES:
        raise _NotRepresentable(f"Xendit does not take refunds in {currency}")
    if money.amount <= 0:
        raise _NotRepresentable("Xendit takes positive refund amounts only")
    major = money.to_major()
    if major == major.to_integral_value():
        return int(major)
    if currency in _WHOLE_UNITS_ONLY:
        raise _NotRepresentable(f"Xendit takes {currency} in whole units only ({major})")
    if len(major.as_tuple().digits) > _MAX_SIGNIFICANT_DIGITS:
        raise _NotRepresentable(f"{major} {currency} has too many digits for Xendit")
    value = float(major)
    if Decimal(repr(value)) != major:  # pragma: no cover - guarded by the digit count
        raise _NotRepresentable(f"{major} {currency} has no exact JSON form")
    return value


def _decimal_of(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))  # the shortest text that reads back as this float
        elif isinstance(value, str):
            number = Decimal(value.strip())
        else:
            return None
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def from_xendit_amount(amount: Any, currency: Any) -> Money | None:
    """Xendit's `amount`/`currency` pair as Money, or None when it cannot be read exactly."""
    if not isinstance(currency, str):
        return None
    code = currency.upper()
    major = _decimal_of(amount)
    if major is None or major < 0 or not is_currency(code):
        return None
    try:
        minor = major.scaleb(exponent(code))
        if minor != minor.to_integral_value():
            return None
        return Money(int(minor), code)
    except (DomainError, InvalidOperation):
        return None


# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

_STATES = {
    "PENDING": PseRefundState.PENDING,
    "SUCCEEDED": PseRefundState.SUCCEEDED,
    "FAILED": PseRefundState.FAILED,
    "CANCELLED": PseRefundState.FAILED,
}

# Xendit's documented `failure_code` values; the code is passed on lower-cased
# (stable), the words help whoever picks the refund up.
_FAILURE_MESSAGES = {
    # Only as a refund's failure (callback), never as an immediate error: the
    # immediate INELIGIBLE_TRANSACTION means the payment was never collected.
    "ineligible_transaction": (
        "The payment is past its refund period at Xendit, or out of refund attempts; "
        "pay out another way."
    ),
    "account_access_blocked": "The payer's account is blocked and cannot receive the refund.",
    "account_not_found": "The payer's account no longer exists; pay out another way.",
    "duplicate_error": "Xendit refused the refund as a duplicate of another one.",
    "insufficient_balance": "The Xendit balance could not cover the refund.",
    "refund_failed": "The payment channel failed the refund.",
    "cancelled": "The refund was cancelled before it was processed.",
}

# Our reference travels in `reference_id` and, as a second copy, in metadata.
_REFERENCE_KEY = "refund_id"
_REASON_KEY = "reason"


class UnreadableRefund(ValueError):
    """A Xendit refund object this adapter cannot read."""


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    reference = _optional_str(obj.get("reference_id"))
    if reference is not None:
        return reference
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        return _optional_str(metadata.get(_REFERENCE_KEY))
    return None


def refund_from_xendit(obj: Any) -> PseRefund:
    """Translate a Xendit refund object (create answer, look-up, webhook `data`)."""
    if not isinstance(obj, Mapping):
        raise UnreadableRefund("refund is not a JSON object")
    refund_id = _optional_str(obj.get("id"))
    if refund_id is None:
        raise UnreadableRefund("refund has no id")
    status = obj.get("status")
    state = _STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise UnreadableRefund(f"unknown refund status {status!r}")
    failure_code = failure_message = None
    if state is PseRefundState.FAILED:
        code = _optional_str(obj.get("failure_code"))
        if code is not None:
            failure_code = code.lower()
        else:
            failure_code = "cancelled" if status == "CANCELLED" else "unknown"
        failure_message = _FAILURE_MESSAGES.get(failure_code)
    currency = obj.get("currency")
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=from_xendit_amount(obj.get("amount"), currency),
        reference=_reference_of(obj),
        failure_code=failure_code,
        failure_message=failure_message,
        fee=from_xendit_amount(obj.get("refund_fee_amount"), currency),
        pse_payment_ids=ids_in(obj, "payment_request_id", "invoice_id", "payment_id"),
    )


# --------------------------------------------------------------------------
# Error envelope -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


_PAYMENT_NOT_FOUND = _Decline("payment_not_found")
# The payment is FAILED, PENDING or VOIDED at Xendit: no money was collected, so
# none may go back (least of all by an offline payout). A person must look.
_NOT_COLLECTED = _Decline("payment_not_collected")

# Xendit error codes that prove the refund was not made. Two generations of the
# API reference name some of them differently (the SDKs' `MAXIMUM_REFUND_AMOUNT_
# REACHED` / `INELIGIBLE_TRANSACTION`, the current reference's `REFUND_AMOUNT_
# EXCEEDED` / `INELIGIBLE_TRANSACTION_STATUS`); both are mapped.
#
# Research on "already refunded" and "past the refund window": the reference
# has no dedicated code for either. The maximum-amount code is documented as
# "the amount cannot exceed the remaining unrefunded amount"; a fully refunded
# payment has nothing left, so it lands there too (amount_exceeds_refundable;
# no separate already_refunded can be told apart). The immediate (403)
# INELIGIBLE_TRANSACTION(_STATUS) is documented as "the transaction is in
# FAILED, PENDING or VOIDED status" / "not allowed for the payment because of
# its current status": the payer was never charged, or was given the money
# back, so it is declined and never paid out offline. Past the channel's refund
# period Xendit accepts the refund and fails it later with the *failure code*
# INELIGIBLE_TRANSACTION ("passed its validity period … or exceeded the
# allowable number of tries"): that one is the offline payout (see
# `_create_answer` and `_FAILURE_MESSAGES`). REFUND_NOT_SUPPORTED (a channel
# without refunds through the API) means the payer can only be paid back
# another way, e.g. to a bank account, which is offline too.
_DECLINES: Mapping[str, _Decline] = {
    "MAXIMUM_REFUND_AMOUNT_REACHED": _Decline("amount_exceeds_refundable"),
    "REFUND_AMOUNT_EXCEEDED": _Decline("amount_exceeds_refundable"),
    "INSUFFICIENT_BALANCE": _Decline("insufficient_balance", retriable=True),
    "INELIGIBLE_TRANSACTION": _NOT_COLLECTED,
    "INELIGIBLE_TRANSACTION_STATUS": _NOT_COLLECTED,
    "REFUND_NOT_SUPPORTED": _Decline("refund_not_supported", offline=True),
    "PARTIAL_REFUND_NOT_SUPPORTED": _Decline("partial_refund_not_supported"),
    "PARTIAL_REFUND_COUNTS_EXCEEDED": _Decline("partial_refund_limit_reached"),
    "TRANSACTION_NOT_FOUND": _PAYMENT_NOT_FOUND,
    "DATA_NOT_FOUND": _PAYMENT_NOT_FOUND,
    "API_VALIDATION_ERROR": _Decline("invalid_request"),
    "INVALID_VALUE_ERROR": _Decline("invalid_request"),
    "TEMPORARILY_UNAVAILABLE": _Decline("temporarily_unavailable", retriable=True),
    "INVALID_MERCHANT_SETTINGS": _Decline("pse_account_misconfigured"),
}
# The failure code of a refund Xendit accepted, then failed past the refund period.
_PAST_WINDOW_FAILURE = "ineligible_transaction"
# 403 REQUEST_FORBIDDEN_ERROR: the key lacks the permission to refund.
_AUTHENTICATION_CODES = frozenset({"INVALID_API_KEY", "REQUEST_FORBIDDEN_ERROR"})
# The statuses each declining code is documented with; another pairing is not trusted.
_DECLINE_STATUSES = frozenset({400, 403, 404})
# "A refund for this payment is being processed": ours may be the one in progress.
_IN_PROGRESS_CODES = frozenset({"REFUND_IN_PROGRESS"})

# Xendit key formats (secret and public, test and live).
_KEY_PATTERN = re.compile(r"\bxnd_(?:public_)?(?:development|production)_[A-Za-z0-9+/=_\-]+")


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

_CALLBACK_HEADER = "x-callback-token"
_SUCCEEDED_EVENT = "refund.succeeded"
_FAILED_EVENT = "refund.failed"
# Which refund states each event may carry; another pairing is not a Xendit event.
_EVENT_STATES = {
    _SUCCEEDED_EVENT: PseRefundState.SUCCEEDED,
    _FAILED_EVENT: PseRefundState.FAILED,
}
_EVENT_ID_PREFIX = "xnd_"


def _derived_event_id(event: Mapping[str, Any]) -> str:
    """A stable id for an event that has none.

    Xendit's refund webhooks carry no event id, and their `created` is the time
    of the delivery attempt, so a hash of the raw body would change with every
    retry. The id is the SHA-256 of the envelope without `created`, serialised
    canonically: the same event delivered again gets the same id, while each
    change of the refund (its status, its `updated` time) gives a new one.
    """
    stable = {key: value for key, value in event.items() if key != "created"}
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _EVENT_ID_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class XenditGateway(PseGateway):
    """One Xendit account, in the domain's words."""

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)

    # -- create ---------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        field = payment_field(submission.pse_payment_id)
        if field is None:
            return Declined(
                code="payment_id_not_supported",
                message=(
                    "Xendit refunds through /refunds need a payment request id (pr-…) "
                    "or an invoice id (24 hex characters)"
                ),
            )
        try:
            amount = to_xendit_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        body = {
            field: submission.pse_payment_id,
            "reference_id": submission.reference,
            "amount": amount,
            "currency": submission.amount.currency,
            "reason": _xendit_reason(submission.reason),
            "metadata": _metadata(submission),
        }
        headers = {**self._headers(), "idempotency-key": submission.idempotency_key}
        try:
            response = await self._http.send("POST", _REFUNDS_PATH, headers=headers, json=body)
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        return self._create_answer(response, submission)

    def _create_answer(
        self, response: httpx.Response, submission: RefundSubmission
    ) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            try:
                refund = refund_from_xendit(json_or_none(response))
            except UnreadableRefund as exc:
                return Unanswered(f"HTTP {status} with an unreadable refund: {exc}")
            if refund.reference is not None and refund.reference != submission.reference:
                return Unanswered(f"refund {refund.pse_refund_id} carries another reference")
            if refund.failure_code == _PAST_WINDOW_FAILURE:
                # Failed at once for the documented past-the-window reason: nothing
                # was refunded, and only an offline payout can give the money back.
                return Declined(
                    code="refund_window_passed",
                    message=refund.failure_message or _PAST_WINDOW_FAILURE,
                    offline=True,
                )
            return Accepted(refund)
        code, message = _error_of(response)
        if status == 401 or (status == 403 and code in _AUTHENTICATION_CODES):
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(message or f"HTTP {status}"),
            )
        if status == 409 or code in _IN_PROGRESS_CODES:
            # IDEMPOTENCY_ERROR / DUPLICATE_ERROR: the key or the reference already
            # stands for a request Xendit may have carried out; REFUND_IN_PROGRESS:
            # a refund of this payment is under way, and it may be ours.
            return Unanswered(self._describe(response))
        decline = _DECLINES.get(code) if code is not None and status in _DECLINE_STATUSES else None
        if decline is None:
            log.warning(
                "pse.xendit.unrecognised_answer",
                pse_account=self._account.name,
                status_code=status,
                error_code=code,
            )
            return Unanswered(self._describe(response))
        return Declined(
            code=decline.code,
            message=self._safe(message or str(code)),
            offline=decline.offline,
            retriable=decline.retriable,
        )

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # Xendit has no look-up by idempotency key: existence is proven by listing
        # the payment's refunds and matching our reference.
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its Xendit id; None when Xendit says there is no such refund."""
        path = f"{_REFUNDS_PATH}/{quote(refund_id, safe='')}"
        try:
            response = await self._http.send("GET", path, headers=self._headers())
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            return Unanswered(self._describe(response))
        try:
            refund = refund_from_xendit(json_or_none(response))
        except UnreadableRefund as exc:
            return Unanswered(f"unreadable refund {refund_id}: {exc}")
        if refund.reference is not None and refund.reference != submission.reference:
            return Unanswered(f"refund {refund_id} carries another reference")
        return Accepted(refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        field = payment_field(submission.pse_payment_id)
        if field is None:
            return Unanswered("the payment id is not one Xendit's refund list can filter on")
        params: dict[str, Any] = {field: submission.pse_payment_id}
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
                return Unanswered("refund list without data")
            items: list[Any] = page["data"]
            for item in items:
                if isinstance(item, Mapping) and _reference_of(item) == submission.reference:
                    try:
                        mine.append(refund_from_xendit(item))
                    except UnreadableRefund as exc:
                        return Unanswered(f"unreadable refund in the list: {exc}")
            has_more = page.get("has_more")
            if has_more is False:
                return self._pick(submission, mine)
            last = items[-1] if items else None
            cursor = last.get("id") if isinstance(last, Mapping) else None
            if has_more is not True or not isinstance(cursor, str) or not cursor:
                return Unanswered("refund list cannot be followed to its end")
            params["after_id"] = cursor
        return Unanswered(f"more than {_MAX_LIST_PAGES} pages of refunds for the payment")

    def _pick(self, submission: RefundSubmission, mine: list[PseRefund]) -> LookupResult:
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    # -- webhooks -------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        # A static token has no timestamp: `now` and the tolerance do not apply,
        # and replays are caught by the event id (see `_derived_event_id`).
        self._verify_token(headers.get(_CALLBACK_HEADER))
        event = json_object(body)
        event_type = event.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("body is not a Xendit event (no `event`)")
        event_id = _derived_event_id(event)
        if event_type not in _EVENT_STATES:
            return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=None)
        try:
            refund = refund_from_xendit(_refund_data(event_type, event.get("data")))
        except UnreadableRefund as exc:
            raise InvalidWebhookPayload(f"{event_type} with an unreadable refund: {exc}") from None
        if refund.state is not _EVENT_STATES[event_type]:
            raise InvalidWebhookPayload(f"{event_type} carries a {refund.state.value} refund")
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify_token(self, token: str | None) -> None:
        """The callback token against every configured one (rotation), in constant time."""
        if not token:
            raise InvalidWebhookSignature("missing x-callback-token header")
        # A static token: what is presented must be the configured token itself.
        verify_webhook(
            self._account, [token.encode("utf-8")], lambda key: key, header="x-callback-token"
        )

    # -- helpers --------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        credentials = base64.b64encode(f"{self._account.api_key}:".encode()).decode("ascii")
        headers = {"Authorization": f"Basic {credentials}"}
        for_user_id = self._account.options.get(FOR_USER_ID_OPTION)
        if for_user_id:
            headers["for-user-id"] = for_user_id
        return headers

    def _describe(self, response: httpx.Response) -> str:
        code, message = _error_of(response)
        return self._safe(answer_summary(response.status_code, code, message))

    def _safe(self, text: Any) -> str:
        """Never pass a key or token on, whatever Xendit echoes."""
        hidden = [self._account.api_key, *self._account.webhook_secrets]
        if self._account.api_key:
            hidden.append(base64.b64encode(f"{self._account.api_key}:".encode()).decode())
        return scrubbed(text, hidden, _KEY_PATTERN)


# --------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------

_REASONS = {
    "duplicate": "DUPLICATE",
    "fraudulent": "FRAUDULENT",
    "requested_by_customer": "REQUESTED_BY_CUSTOMER",
    "product_not_received": "REQUESTED_BY_CUSTOMER",
    "product_not_as_described": "REQUESTED_BY_CUSTOMER",
    "order_canceled": "CANCELLATION",
    "other": "OTHERS",
}

# Xendit metadata limits: 50 keys, keys up to 40 characters, values up to 500.
_METADATA_MAX_KEYS = 50
_METADATA_KEY_MAX_CHARS = 40
_METADATA_VALUE_MAX_CHARS = 500


def _xendit_reason(reason: str) -> str:
    return _REASONS.get(reason, "OTHERS")


def _metadata(submission: RefundSubmission) -> dict[str, str]:
    fields = {
        _REFERENCE_KEY: submission.reference[:_METADATA_VALUE_MAX_CHARS],
        _REASON_KEY: submission.reason[:_METADATA_VALUE_MAX_CHARS],
    }
    for key, value in submission.metadata.items():
        if len(fields) >= _METADATA_MAX_KEYS:
            break
        # Our own keys win; over-long keys cannot be cut safely (two could merge).
        if key in fields or not key or len(key) > _METADATA_KEY_MAX_CHARS or not value:
            continue
        fields[key] = str(value)[:_METADATA_VALUE_MAX_CHARS]
    return fields


def _refund_data(event_type: str, data: Any) -> Any:
    """The refund object of a webhook.

    The API reference's example nests a second envelope inside `data`
    (`data.event`, `data.data`); the SDKs' callback model has the refund in
    `data` itself. Both are read.
    """
    if (
        isinstance(data, Mapping)
        and "id" not in data
        and data.get("event") == event_type
        and isinstance(data.get("data"), Mapping)
    ):
        return data["data"]
    return data


def _error_of(response: httpx.Response) -> tuple[str | None, str | None]:
    body = json_or_none(response)
    if not isinstance(body, Mapping):
        return None, None
    code, message = body.get("error_code"), body.get("message")
    return (
        code if isinstance(code, str) and code else None,
        message if isinstance(message, str) and message else None,
    )
