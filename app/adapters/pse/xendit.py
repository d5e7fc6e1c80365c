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
- Dispute webhooks (Cards and QRIS: `dispute.action_required`,
  `dispute.under_review`, `dispute.won`, `dispute.lost`) carry the same token
  and put the dispute's fields at the top level, beside `event`, with the
  amount as decimal strings in major units (`amount.initial`). They carry no
  event id either: it is derived from the dispute id, status and `updated_at`
  (see `_dispute_event_id`). Their `payment_id` is the Payments API v3 id
  (`py-…`), which is what the dispute names our payment by.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from app.adapters.pse.base import DeclineRule, ids_in, json_or_none
from app.adapters.pse.disputes import (
    UnreadableDispute,
    dispute_report,
    dispute_status,
    iso_time,
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
    cursor_page,
    metadata_for,
    quoted,
    reference_in,
    said,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.errors import DomainError
from app.domain.money import Money, is_currency
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

_REFUNDS_PATH = "/refunds"

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
        elif isinstance(value, str) and value.isascii():  # Decimal() reads "١٢" as 12
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
        return Money.from_major(major, code, exact=True)
    except DomainError:
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


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    # Our reference travels in `reference_id` and, as a second copy, in metadata.
    return said(obj.get("reference_id")) or reference_in(obj)


def refund_from_xendit(obj: Any) -> PseRefund:
    """Translate a Xendit refund object (create answer, look-up, webhook `data`)."""
    if not isinstance(obj, Mapping):
        raise UnreadableRefund("refund is not a JSON object")
    refund_id = said(obj.get("id"))
    if refund_id is None:
        raise UnreadableRefund("refund has no id")
    status = obj.get("status")
    state = _STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise UnreadableRefund(f"unknown refund status {status!r}")
    failure_code = failure_message = None
    if state is PseRefundState.FAILED:
        code = said(obj.get("failure_code"))
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
# `_accept_created` and `_FAILURE_MESSAGES`). REFUND_NOT_SUPPORTED (a channel
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


_DISPUTE_EVENT_PREFIX = "dispute."
_DISPUTE_EVENT_ID_PREFIX = "xnd_dspt_"
# The dispute's `status` (Dispute webhook notifications; Dispute Report). The
# disputed amount is held while ACTION_REQUIRED and UNDER_REVIEW.
_DISPUTE_STATUSES = {
    "ACTION_REQUIRED": DisputeStatus.OPEN,
    "UNDER_REVIEW": DisputeStatus.OPEN,
    "WON": DisputeStatus.WON,
    "LOST": DisputeStatus.LOST,
}


def _dispute_object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dispute's fields: at the top level, beside `event`, as Xendit documents;
    inside `data` if a delivery wraps them as refund webhooks are wrapped."""
    data = event.get("data")
    if "id" not in event and isinstance(data, Mapping) and "id" in data:
        return data
    return event


def _dispute_event_id(event: Mapping[str, Any]) -> str:
    """A stable id for a dispute event, which carries none: the dispute id, its
    status and its `updated_at`, hashed. A redelivery gets the same id; each
    change of the dispute gets a new one. Without all three the whole envelope
    (less the delivery time) is hashed, as for refunds (and a dispute without an
    id or status is refused when it is read)."""
    obj = _dispute_object(event)
    fields = [said(obj.get(key)) for key in ("id", "status", "updated_at")]
    if None in fields:
        return _DISPUTE_EVENT_ID_PREFIX + _derived_event_id(event).removeprefix(_EVENT_ID_PREFIX)
    identity = "\n".join(field for field in fields if field is not None)
    return _DISPUTE_EVENT_ID_PREFIX + hashlib.sha256(identity.encode("utf-8")).hexdigest()


def dispute_from_xendit(event_type: str, event: Mapping[str, Any]) -> DisputeReport:
    """Translate a Xendit dispute webhook (raises UnreadableDispute).

    The amount is `amount.initial`, the disputed amount. `amount.terminal` (set
    once the dispute is decided) is not read: what it holds is not documented.
    """
    obj = _dispute_object(event)
    status = dispute_status(obj.get("status"), _DISPUTE_STATUSES)
    # Each documented event names the status it carries; another pairing is not Xendit's.
    named = event_type.removeprefix(_DISPUTE_EVENT_PREFIX).upper()
    if named in _DISPUTE_STATUSES and named != obj.get("status"):
        raise UnreadableDispute(f"{event_type} carries a dispute in status {obj.get('status')!r}")
    amount = obj.get("amount")
    initial = amount.get("initial") if isinstance(amount, Mapping) else amount
    category = obj.get("category")
    return dispute_report(
        pse_dispute_id=obj.get("id"),
        status=status,
        amount=from_xendit_amount(initial, obj.get("currency")),
        reason=category.get("name") if isinstance(category, Mapping) else category,
        evidence_due_by=iso_time(obj.get("due_date"), "due_date"),
        opened_at=iso_time(obj.get("created_at"), "created_at"),
        pse_payment_ids=ids_in(obj, "payment_id", "payment_request_id", "invoice_id"),
    )


class XenditGateway(RefundResourceGateway):
    """One Xendit account, in the domain's words."""

    provider = "xendit"
    key_pattern = _KEY_PATTERN
    unrecognised_event = "unrecognised_answer"
    refund_events = frozenset(_EVENT_STATES)
    dispute_event_prefix = _DISPUTE_EVENT_PREFIX

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": basic_auth(self._account.api_key)}
        for_user_id = self._account.options.get(FOR_USER_ID_OPTION)
        if for_user_id:
            headers["for-user-id"] = for_user_id
        return headers

    def _secrets(self) -> tuple[str, ...]:
        # The Basic credential is the key in another form: kept out as well.
        if not self._account.api_key:
            return super()._secrets()
        credential = basic_auth(self._account.api_key).removeprefix("Basic ")
        return (*super()._secrets(), credential)

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
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
            "metadata": metadata_for(submission, _METADATA),
        }
        return PseRequest(
            "POST",
            _REFUNDS_PATH,
            headers={"idempotency-key": submission.idempotency_key},
            json=body,
        )

    def _accept_created(
        self, submission: RefundSubmission, obj: Any, refund: PseRefund
    ) -> SubmitResult:
        checked = self._checked(submission, obj, refund)
        if isinstance(checked, Accepted) and refund.failure_code == _PAST_WINDOW_FAILURE:
            # Failed at once for the documented past-the-window reason: nothing
            # was refunded, and only an offline payout can give the money back.
            return Declined(
                code="refund_window_passed",
                message=refund.failure_message or _PAST_WINDOW_FAILURE,
                offline=True,
            )
        return checked

    def _error_of(self, response: httpx.Response) -> PseError:
        body = json_or_none(response)
        if not isinstance(body, Mapping):
            return PseError(None, None)
        return PseError(said(body.get("error_code")), said(body.get("message")), body)

    def _refuses_credentials(self, status: int, error: PseError) -> bool:
        return status == 401 or (status == 403 and error.code in _AUTHENTICATION_CODES)

    def _in_flight(self, status: int, error: PseError) -> bool:
        # IDEMPOTENCY_ERROR / DUPLICATE_ERROR (409): the key or the reference already
        # stands for a request Xendit may have carried out; REFUND_IN_PROGRESS:
        # a refund of this payment is under way, and it may be ours.
        return status == 409 or error.code in _IN_PROGRESS_CODES

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | None:
        if error.code is None or status not in _DECLINE_STATUSES:
            return None
        return _DECLINES.get(error.code)

    # -- find -----------------------------------------------------------------

    def _read_refund(self, obj: Any) -> PseRefund:
        return refund_from_xendit(obj)

    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        return _reference_of(obj)

    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str:
        return f"{_REFUNDS_PATH}/{quoted(refund_id)}"

    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered:
        field = payment_field(submission.pse_payment_id)
        if field is None:
            return Unanswered("the payment id is not one Xendit's refund list can filter on")
        # Xendit's default page size: a payment has far fewer refunds.
        return RefundListing(_REFUNDS_PATH, {field: submission.pse_payment_id})

    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            return "refund list without data"
        return cursor_page(body["data"], body.get("has_more"), params, "after_id")

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        # A static token has no timestamp: `now` and the tolerance do not apply,
        # and replays are caught by the event id (see `_derived_event_id`).
        token = self._header(headers, _CALLBACK_HEADER, "x-callback-token")
        return WebhookProof(header="x-callback-token", presented=[token.encode("utf-8")])

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        event_type = event.get("event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("body is not a Xendit event (no `event`)")
        if self._carries_dispute(event_type):
            return _dispute_event_id(event), event_type
        return _derived_event_id(event), event_type

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund:
        refund = refund_from_xendit(_refund_data(event_type, event.get("data")))
        if refund.state is not _EVENT_STATES[event_type]:
            raise InvalidWebhookPayload(f"{event_type} carries a {refund.state.value} refund")
        return refund

    def _event_dispute(self, event_type: str, event: Mapping[str, Any]) -> DisputeReport:
        return dispute_from_xendit(event_type, event)


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
_METADATA = MetadataLimits(max_keys=50, key_max_chars=40, value_max_chars=500)


def _xendit_reason(reason: str) -> str:
    return _REASONS.get(reason, "OTHERS")


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
