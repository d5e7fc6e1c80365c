"""KOMOJU: refunds through `POST /api/v1/payments/{id}/refund`, found again in the
payment object (`GET /api/v1/payments/{id}`), events through signed webhooks.

What KOMOJU documents, and what this adapter relies on:

- Auth is HTTP Basic with the secret key as user name and an empty password.
- Amounts are integers "in the lowest denomination of the currency" (whole yen
  for JPY, cents for USD): our ISO 4217 minor units, sent as they are.
- The refund call takes only `amount`, `description` and platform details; a
  refund has no metadata, so our refund reference travels in `description` and
  comes back on the refund object, where the look-up matches it.
- The answer is the whole payment: `refunds[]` (each with `id`, `amount`,
  `currency`, `description`, `created_at`…), `refund_requests[]` and
  `amount_refunded`. A refund has no status: one listed in `refunds[]` exists.
  The exception is the older cash pick-up flow, where the refund carries a
  `redirect_url` the payer must visit to collect cash at a konbini: that refund
  is pending until `payment.refunded` says the payer was paid.
- POST requests are idempotent through `X-KOMOJU-IDEMPOTENCY` (at most 100
  ASCII characters, kept 24 hours; the first answer is replayed, a repeat while
  the first is still running gets 409).
- Errors come as `{"error": {"code", "message", "param", "details"}}`; the codes
  are generic (`bad_request`, `unprocessable_entity`, `invalid_parameter`,
  `not_refundable`…), so a few refusals are told apart by asking for the payment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from app.adapters.pse.base import DeclineRule, ids_in, json_or_none, ours_among
from app.adapters.pse.http import (
    HttpPseGateway,
    PseError,
    PseRequest,
    UnreadableRefund,
    WebhookProof,
    basic_auth,
    error_envelope,
    minor_units,
    quoted,
    shown,
)
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    NotFound,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)
from app.domain.times import in_utc

log = structlog.get_logger("app.pse.komoju")

_PAYMENTS_PATH = "/api/v1/payments"
_IDEMPOTENCY_HEADER = "X-KOMOJU-IDEMPOTENCY"
_IDEMPOTENCY_KEY_MAX_CHARS = 100
_API_VERSION_HEADER = "X-KOMOJU-API-VERSION"
# `[accounts.<name>.options] api_version = "…"` pins the API version of every call.
API_VERSION_OPTION = "api_version"

# The currencies KOMOJU's API accepts. Its amounts are "the lowest denomination
# of the currency", read here as the ISO 4217 minor unit for every one of them.
KOMOJU_CURRENCIES = frozenset(
    "JPY USD EUR TWD KRW PLN GBP HKD SGD NZD AUD IDR MYR PHP THB CNY BRL CHF CAD VND".split()
)

# Payment methods KOMOJU cannot refund to the payer: only a refund request with
# the payer's bank account (`POST /payments/{id}/refund_request`, a manual bank
# transfer by KOMOJU) gives the money back, which is an offline payout for us.
_CASH_PAYMENT_TYPES = frozenset({"konbini", "bank_transfer", "pay_easy"})
# Payment statuses in which no money was taken, so nothing can be refunded.
_NOT_CAPTURED = frozenset({"pending", "authorized", "cancelled", "expired", "failed"})

# Webhooks
_SIGNATURE_HEADER = "x-komoju-signature"
_REFUND_CREATED = "payment.refund.created"
_FULLY_REFUNDED = "payment.refunded"
_REFUND_EVENTS = frozenset({_REFUND_CREATED, _FULLY_REFUNDED})
_HEX_DIGITS = frozenset("0123456789abcdef")

# KOMOJU secret and publishable keys (`sk_…`, `pk_…`, with or without live/test).
_KEY_PATTERN = re.compile(r"\b[sp]k_[A-Za-z0-9_]{4,}")


class UnreadableKomoju(UnreadableRefund):
    """A KOMOJU payment or refund object this adapter cannot read."""


# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------


def refund_from_komoju(
    obj: Any,
    *,
    payment: Mapping[str, Any] | None = None,
    payment_currency: str | None = None,
    collected: bool = False,
) -> PseRefund:
    """Translate one entry of a payment's `refunds[]`.

    `payment`: the payment object listing it (a KOMOJU refund does not name
    its payment; the list it stands in does).
    `collected`: the payer is known to hold the money (a `payment.refunded` event),
    so a cash pick-up refund is no longer pending.
    """
    if not isinstance(obj, Mapping):
        raise UnreadableKomoju("refund is not a JSON object")
    resource = obj.get("resource")
    if resource is not None and resource != "refund":
        raise UnreadableKomoju(f"expected a refund, got {resource!r}")
    refund_id = obj.get("id")
    if not isinstance(refund_id, str) or not refund_id:
        raise UnreadableKomoju("refund has no id")
    currency = obj.get("currency") or payment_currency
    description = obj.get("description")
    redirect_url = obj.get("redirect_url")
    awaiting_payer = isinstance(redirect_url, str) and bool(redirect_url) and not collected
    return PseRefund(
        pse_refund_id=refund_id,
        state=PseRefundState.PENDING if awaiting_payer else PseRefundState.SUCCEEDED,
        amount=minor_units(obj.get("amount"), currency),
        reference=description if isinstance(description, str) and description else None,
        pse_payment_ids=ids_in(payment, "id") if payment is not None else (),
    )


def _read_payment(obj: Any, payment_id: str | None = None) -> Mapping[str, Any]:
    """A KOMOJU payment object with its `refunds[]`; `payment_id` when it must be that one."""
    if not isinstance(obj, Mapping) or obj.get("resource") != "payment":
        raise UnreadableKomoju("not a KOMOJU payment object")
    found = obj.get("id")
    if not isinstance(found, str) or not found:
        raise UnreadableKomoju("payment has no id")
    if payment_id is not None and found != payment_id:
        raise UnreadableKomoju(f"answer is about payment {found}, not {payment_id}")
    if not isinstance(obj.get("refunds"), list):
        raise UnreadableKomoju("payment has no refunds list")
    return obj


def _refunds_of(payment: Mapping[str, Any]) -> list[Any]:
    refunds: list[Any] = payment["refunds"]
    return refunds


def _currency_of(payment: Mapping[str, Any]) -> str | None:
    currency = payment.get("currency")
    return currency if isinstance(currency, str) else None


def _payment_type(payment: Mapping[str, Any]) -> str | None:
    details = payment.get("payment_details")
    kind = details.get("type") if isinstance(details, Mapping) else None
    return kind if isinstance(kind, str) else None


def _created_at(item: Any) -> datetime:
    value = item.get("created_at") if isinstance(item, Mapping) else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            found = in_utc(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
            if found is not None:
                return found
    # Missing, unreadable or outside 1970-2999: ranked below any real time.
    return datetime.min.replace(tzinfo=UTC)


def _newest_first(items: Sequence[Any]) -> list[Any]:
    """By `created_at`, most recent first; the later one in the list first on a tie."""
    ranked = sorted(enumerate(items), key=lambda pair: (_created_at(pair[1]), pair[0]))
    return [item for _, item in reversed(ranked)]


def _newest(items: Sequence[Any]) -> Any:
    """The most recent entry by `created_at`; the later one in the list on a tie."""
    return _newest_first(items)[0]


def _ours(payment: Mapping[str, Any], reference: str, pse_account: str) -> Accepted | NotFound:
    """Our refund among the payment's refunds (matched on `description`).

    A KOMOJU refund has no failure status: every listed one moved money, so two
    under one reference are a double refund, reported for the service to flag.
    """
    mine = [
        item
        for item in _refunds_of(payment)
        if isinstance(item, Mapping) and item.get("description") == reference
    ]
    currency = _currency_of(payment)
    return ours_among(
        [
            refund_from_komoju(item, payment=payment, payment_currency=currency)
            for item in _newest_first(mine)
        ],
        pse_account=pse_account,
        reference=reference,
    )


def _latest_refund(payment: Mapping[str, Any]) -> Any:
    """The newest real refund of a payment (chargebacks are listed in `refunds[]` too)."""
    refunds = [
        item
        for item in _refunds_of(payment)
        if isinstance(item, Mapping) and item.get("chargeback") is not True
    ]
    return _newest(refunds) if refunds else None


# --------------------------------------------------------------------------
# Error envelope -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


# KOMOJU documents one error list for every endpoint (the generic HTTP codes plus
# request_failed, invalid_payment_type, invalid_token, invalid_currency,
# not_refundable, not_capturable, not_cancellable, fraudulent, invalid_parameter,
# missing_parameter, insufficient_funds, used_number, card_declined,
# invalid_password, bad_verification_value, exceeds_limit, card_expired,
# invalid_number, invalid_account, locked). None is dedicated to refunds:
#
# - "More than is left to refund" has no code of its own. The amount is the only
#   refund parameter we send, always a positive integer the policy already held
#   to our own refundable amount, so `invalid_parameter` on `amount` can only mean
#   it is more than KOMOJU will refund.
# - `insufficient_funds` is a card code for payments. On a refund the card is not
#   charged, so it can only be the merchant's balance: KOMOJU refuses refunds
#   larger than the unsettled balance (its help centre). Which code it sends then
#   is unconfirmed; this one is the only plausible match and is retriable.
# - `not_refundable` ("The payment you requested is not refundable.") covers a
#   payment already fully refunded, a cash method, a payment never captured and
#   one past the card network's refund period alike; only the payment tells them
#   apart, so the adapter asks for it (see `_explain_not_refundable`).
# - Generic codes (`bad_request`, `unprocessable_entity`) are matched on their
#   message, conservatively; anything else stays unanswered.
_AMOUNT_PARAM = "amount"
_BALANCE = _Decline("insufficient_balance", retriable=True)
_TOO_MUCH = _Decline("amount_exceeds_refundable")
_ALREADY = _Decline("already_refunded")
_GENERIC_CODES = frozenset({"bad_request", "unprocessable_entity", "invalid_parameter"})
_EXCEEDS_WORDS = ("exceed", "greater than", "more than", "larger than")
# `locked` ("Processing.") and 409 both mean the same key is still being worked on.
_IN_PROGRESS_CODES = frozenset({"locked"})


def _decline_for(error: Mapping[str, Any]) -> _Decline | None:
    code = error.get("code")
    if code == "invalid_parameter" and error.get("param") == _AMOUNT_PARAM:
        return _TOO_MUCH
    if code == "insufficient_funds":
        return _BALANCE
    if code in _GENERIC_CODES:
        message = str(error.get("message") or "").lower()
        if "refund" in message and "already" in message:
            return _ALREADY
        if "refund" in message and any(words in message for words in _EXCEEDS_WORDS):
            return _TOO_MUCH
    return None


def idempotency_header_value(key: str) -> str:
    """Our idempotency key as KOMOJU accepts it: at most 100 printable ASCII characters.

    A longer or non-ASCII key is replaced by its SHA-256, which is just as stable:
    every resend of the refund still carries the same value.
    """
    if 0 < len(key) <= _IDEMPOTENCY_KEY_MAX_CHARS and key.isascii() and key.isprintable():
        return key
    return "sha256-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class KomojuGateway(HttpPseGateway):
    """One KOMOJU merchant account, in the domain's words.

    `account.api_key` is the secret key; `account.options["api_version"]`, when set,
    is sent as `X-KOMOJU-API-VERSION`; `account.webhook_secrets` are the webhook
    secret tokens accepted (all of them, for rotation).
    """

    provider = "komoju"
    key_pattern = _KEY_PATTERN
    refund_events = _REFUND_EVENTS

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": basic_auth(self._account.api_key), "Accept": "application/json"}
        version = self._account.options.get(API_VERSION_OPTION)
        if version:
            headers[_API_VERSION_HEADER] = version
        return headers

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        money = submission.amount
        if money.amount < 1:
            return Declined("invalid_amount", f"cannot refund {money} at KOMOJU")
        if money.currency not in KOMOJU_CURRENCIES:
            return Declined("currency_not_supported", f"KOMOJU does not process {money.currency}")
        return PseRequest(
            "POST",
            f"{_payment_path(submission.pse_payment_id)}/refund",
            headers={_IDEMPOTENCY_HEADER: idempotency_header_value(submission.idempotency_key)},
            json={"amount": money.amount, "description": submission.reference},
        )

    def _created(self, submission: RefundSubmission, response: httpx.Response) -> SubmitResult:
        status = response.status_code
        try:
            payment = _read_payment(json_or_none(response), submission.pse_payment_id)
            ours = _ours(payment, submission.reference, self._account.name)
        except UnreadableKomoju as exc:
            return Unanswered(f"HTTP {status} without a readable payment: {exc}")
        if isinstance(ours, NotFound):
            log.warning(
                "pse.komoju.refund_missing_from_answer",
                pse_account=self._account.name,
                reference=submission.reference,
            )
            return Unanswered(f"HTTP {status} but the payment lists no refund of ours")
        return ours

    def _error_of(self, response: httpx.Response) -> PseError:
        error = error_envelope(response)
        return PseError(shown(error.get("code")), shown(error.get("message")), error)

    def _in_flight(self, status: int, error: PseError) -> bool:
        # The same idempotency key is still being processed: KOMOJU may be making it.
        return status in (409, 423) or error.code in _IN_PROGRESS_CODES

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | SubmitResult | None:
        if status == 404 and error.code == "not_found":
            return Declined("payment_not_found", self._summary(status, error))
        if status not in (400, 422):
            return None
        if error.code == "not_refundable":
            return await self._explain_not_refundable(submission, error)
        return _decline_for(error.detail)

    def _error_log_fields(self, error: PseError) -> dict[str, Any]:
        return {"error_code": error.code, "error_param": error.detail.get("param")}

    async def _explain_not_refundable(
        self, submission: RefundSubmission, error: PseError
    ) -> SubmitResult:
        """Tell apart the refusals KOMOJU reports as `not_refundable`, from the payment.

        The 422 proves this request made no refund; the payment says why:
        - our reference already among its refunds: an earlier send went through;
        - status `refunded`: nothing left to refund;
        - a cash method (konbini, bank transfer, Pay-easy): only a refund request
          with the payer's bank account could pay it back, an offline payout;
        - never captured: there is no money to give back;
        - captured with money left: past the refund period of the method or
          otherwise ineligible at KOMOJU, so the money must go back offline.
        When the payment cannot be read, nothing is concluded.
        """
        refusal = self._safe(error.message or "not_refundable")
        answer = await self._get(_payment_path(submission.pse_payment_id))
        if isinstance(answer, Unanswered):
            return Unanswered(f"not_refundable, payment unreadable: {answer.reason}")
        if not 200 <= answer.status_code < 300:
            return Unanswered(f"not_refundable, payment look-up: {self._describe(answer)}")
        try:
            payment = _read_payment(json_or_none(answer), submission.pse_payment_id)
            ours = _ours(payment, submission.reference, self._account.name)
        except UnreadableKomoju as exc:
            return Unanswered(f"not_refundable, payment unreadable: {exc}")
        if isinstance(ours, Accepted):
            return ours
        status = payment.get("status")
        kind = _payment_type(payment)
        if status == "refunded":
            return Declined("already_refunded", f"{refusal} (the payment is fully refunded)")
        if kind in _CASH_PAYMENT_TYPES:
            return Declined(
                "bank_account_refund_required",
                f"{refusal} ({kind} payments are refunded by bank transfer only)",
                offline=True,
            )
        if any(
            isinstance(item, Mapping) and item.get("chargeback") is True
            for item in _refunds_of(payment)
        ):
            return Declined("payment_disputed", f"{refusal} (the payment has a chargeback)")
        if status in _NOT_CAPTURED:
            return Declined("payment_not_captured", f"{refusal} (the payment is {status})")
        if status == "captured":
            return Declined(
                "not_refundable",
                f"{refusal} (captured {kind or 'payment'} past its refund period or ineligible)",
                offline=True,
            )
        log.warning(
            "pse.komoju.not_refundable_unexplained",
            pse_account=self._account.name,
            payment_status=status,
        )
        return Unanswered(f"not_refundable with payment status {status!r}")

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        # KOMOJU has no refund resource of its own: the payment lists every refund
        # (no pagination), so its `refunds[]` is the whole truth for the look-up.
        answer = await self._get(_payment_path(submission.pse_payment_id))
        if isinstance(answer, Unanswered):
            return answer
        status = answer.status_code
        if status == 404 and self._error_of(answer).code == "not_found":
            if submission.pse_refund_id:
                return Unanswered(
                    f"payment {submission.pse_payment_id} is gone although refund "
                    f"{submission.pse_refund_id} was seen on it"
                )
            # No such payment at this account: no refund of ours can exist either.
            return NotFound()
        if not 200 <= status < 300:
            return Unanswered(self._describe(answer))
        try:
            payment = _read_payment(json_or_none(answer), submission.pse_payment_id)
            by_id = _by_id(payment, submission.pse_refund_id)
            ours = _ours(payment, submission.reference, self._account.name)
        except UnreadableKomoju as exc:
            return Unanswered(f"payment unreadable: {exc}")
        if by_id is not None:
            if by_id.reference is not None and by_id.reference != submission.reference:
                return Unanswered(f"refund {by_id.pse_refund_id} carries another reference")
            return Accepted(by_id)
        if isinstance(ours, Accepted):
            return ours
        if submission.pse_refund_id:
            # KOMOJU once answered with this refund: its absence now proves nothing.
            return Unanswered(f"refund {submission.pse_refund_id} is no longer listed")
        return NotFound()

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        """`X-Komoju-Signature`: hex HMAC-SHA256 of the raw body, keyed with the secret token.

        No timestamp: the tolerance cannot apply, and replays are stopped by the
        event id, stored once per account."""
        given = self._header(headers, _SIGNATURE_HEADER, "X-Komoju-Signature").strip().lower()
        if len(given) != hashlib.sha256().digest_size * 2 or not set(given) <= _HEX_DIGITS:
            raise InvalidWebhookSignature("malformed X-Komoju-Signature header")
        return WebhookProof(
            header="X-Komoju-Signature", presented=[given.encode("ascii")], signed=body
        )

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        resource, event_type = event.get("resource"), event.get("type")
        if resource is not None and resource != "event":
            raise InvalidWebhookPayload("body is not a KOMOJU event")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("event without a type")
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            # Every documented event carries an id (X-Komoju-ID names the delivery,
            # not the event); without one, the same body must still dedupe alike.
            event_id = "sha256-" + hashlib.sha256(body).hexdigest()
        return event_id, event_type

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund:
        payment = _read_payment(event.get("data"))
        latest = _latest_refund(payment)
        if latest is None:
            raise UnreadableKomoju("the payment lists no refund")
        # Both events carry the payment; the refund they announce is its newest.
        # `payment.refunded` is sent once the payer has the money, cash included.
        return refund_from_komoju(
            latest,
            payment=payment,
            payment_currency=_currency_of(payment),
            collected=event_type == _FULLY_REFUNDED,
        )


def _payment_path(payment_id: str) -> str:
    return f"{_PAYMENTS_PATH}/{quoted(payment_id)}"


def _by_id(payment: Mapping[str, Any], refund_id: str | None) -> PseRefund | None:
    if not refund_id:
        return None
    for item in _refunds_of(payment):
        if isinstance(item, Mapping) and item.get("id") == refund_id:
            return refund_from_komoju(item, payment=payment, payment_currency=_currency_of(payment))
    return None
