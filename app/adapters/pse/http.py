"""The skeleton every HTTP PSE adapter shares, and the hooks each provider fills in.

A provider is a subclass that declares its data (name, key shapes, refund events,
page cap) and implements only what is its own, as a connector does behind
Hyperswitch's connector trait:

- `_headers`: authentication and pinned versions;
- `_create_request`: units and the request body, or a refusal before sending;
- `_error_of`: how its error envelope reads;
- `_research_decline`: its decline table and special cases;
- `_webhook_proof`: what its webhook signs and how its headers parse;
- `_event_identity`, `_event_refund`: its event envelope;
- `_event_dispute`: its dispute events, for providers that send them
  (`dispute_event_prefix`; see disputes.py for what every one is held to);
- `_created`: its answer to a create.

`RefundResourceGateway` adds the look-up for PSEs that keep refunds as a
resource of their own; those implement `_read_refund`, `_reference_of`,
`_refund_path`, `_refund_listing` and `_list_page`.

Sending through `RetryingHttp`, triaging the answer (2xx, 401/403, in flight,
other 4xx, the rest), scrubbing secrets, summaries of answers, the look-up
order, the HMAC and the timestamp tolerance all happen here, alike for every
provider.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from app.adapters.pse.base import (
    DeclineRule,
    PseAccount,
    PseNoAnswer,
    RetryingHttp,
    answer_summary,
    json_object,
    json_or_none,
    log,
    ours_among,
    scrubbed,
    utf8_key,
    verify_webhook,
)
from app.adapters.pse.disputes import UnreadableDispute, dispute_event
from app.domain.disputes import DisputeReport
from app.domain.errors import DomainError
from app.domain.money import Money, is_currency
from app.domain.ports import PseGateway
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    PseRefund,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

# Where our refund reference and reason travel in a PSE's metadata (or notes).
REFERENCE_KEY = "refund_id"
REASON_KEY = "reason"


class UnreadableRefund(ValueError):
    """A PSE answer that cannot be read as the refund it should carry."""


# --------------------------------------------------------------------------
# What hooks hand to the template
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PseRequest:
    """One call to a PSE; the account's headers (`_headers`) are added when sent."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    form: Mapping[str, Any] | None = None
    json: Any = None
    # False where a resend could refund twice: the PSE honours no idempotency key.
    retry: bool = True


@dataclass(frozen=True, slots=True)
class PseError:
    """An error answer in the provider's words."""

    code: str | None  # what names the refusal in summaries
    message: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)  # the error object, for research


@dataclass(frozen=True, slots=True)
class WebhookProof:
    """What a webhook request offers as proof that it comes from the PSE."""

    header: str  # how errors and logs name the proof
    presented: Sequence[bytes]  # the hex signatures, or the token, the request carries
    # The bytes the PSE takes a hex HMAC-SHA256 of; None: a static token, compared as is.
    signed: bytes | None = None
    key_of: Callable[[str], bytes | None] = utf8_key
    # When the PSE signed (Unix seconds): held to the tolerance once a signature matched.
    timestamp: int | None = None
    timestamp_name: str = "timestamp"


@dataclass(frozen=True, slots=True)
class RefundListing:
    """Where a payment's refunds are listed, and the parameters of the first page."""

    path: str
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a refund list: its items, and how the list goes on."""

    items: Sequence[Any]
    following: Mapping[str, Any] | None = None  # the next page's params; None: the last page
    stuck: str | None = None  # why the list cannot be followed past this page


# --------------------------------------------------------------------------
# Small pieces the providers' transformers share
# --------------------------------------------------------------------------


def quoted(segment: str) -> str:
    """An id as one path segment, whatever characters it holds."""
    return quote(segment, safe="")


def basic_auth(user: str, password: str = "") -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def said(value: Any) -> str | None:
    """A non-empty string from an answer, or None."""
    return value if isinstance(value, str) and value else None


def shown(value: Any) -> str | None:
    """Whatever an answer holds, as text for a summary (a number too); None when empty."""
    return str(value) if value else None


def error_envelope(response: httpx.Response) -> Mapping[str, Any]:
    """The `error` object of a `{"error": {...}}` answer, or an empty one."""
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) else {}


def reference_in(obj: Mapping[str, Any], container: str = "metadata") -> str | None:
    """Our refund reference as stored in a PSE object's metadata (or notes)."""
    values = obj.get(container)
    return said(values.get(REFERENCE_KEY)) if isinstance(values, Mapping) else None


def minor_units(amount: Any, currency: Any) -> Money | None:
    """An integer amount in the ISO 4217 minor unit of `currency` (any case) as Money;
    None when it cannot be read exactly."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        return None
    code = currency.upper()
    if not is_currency(code):
        return None
    try:
        return Money(amount, code)
    except DomainError:
        return None


@dataclass(frozen=True, slots=True)
class MetadataLimits:
    """A PSE's metadata limits, as it documents them."""

    max_keys: int
    value_max_chars: int
    key_max_chars: int | None = None
    forbidden_in_keys: str = ""
    # Most PSEs delete a key sent with an empty value; where none does, it is kept.
    keeps_empty_values: bool = False


def metadata_for(submission: RefundSubmission, limits: MetadataLimits) -> dict[str, str]:
    """Our reference and reason, then the refund's own metadata, within `limits`.

    Our keys win (the look-up matches on the reference, which is never cut: a cut
    one could not be matched again). Keys that are too long or hold forbidden
    characters are left out rather than cut: cutting could merge two keys.
    """
    fields = {
        REFERENCE_KEY: submission.reference,
        REASON_KEY: submission.reason[: limits.value_max_chars],
    }
    for key, value in submission.metadata.items():
        if len(fields) >= limits.max_keys:
            break
        if (
            key in fields
            or not key
            or (limits.key_max_chars is not None and len(key) > limits.key_max_chars)
            or any(char in key for char in limits.forbidden_in_keys)
            or (not value and not limits.keeps_empty_values)
        ):
            continue
        fields[key] = str(value)[: limits.value_max_chars]
    return fields


def cursor_page(
    items: Sequence[Any], has_more: Any, params: Mapping[str, Any], cursor_param: str
) -> ListPage:
    """A page of a list paged by the id of its last item (`has_more` + a cursor)."""
    if has_more is False:
        return ListPage(items)
    last = items[-1] if items else None
    cursor = said(last.get("id")) if isinstance(last, Mapping) else None
    if has_more is not True or cursor is None:
        return ListPage(items, stuck="refund list cannot be followed to its end")
    return ListPage(items, following={**params, cursor_param: cursor})


# --------------------------------------------------------------------------
# The template
# --------------------------------------------------------------------------


class HttpPseGateway(PseGateway):
    """One account at an HTTP PSE, in the domain's words: the shared skeleton."""

    # Names the provider in log events (`pse.<provider>.…`).
    provider: ClassVar[str]
    # The shapes of the provider's keys, masked or not, never passed on.
    key_pattern: ClassVar[re.Pattern[str]]
    # The event logged for an error answer no research recognises.
    unrecognised_event: ClassVar[str] = "unrecognised_error"
    # Put in front of the summary of an answer meaning "still in flight".
    in_flight_note: ClassVar[str | None] = None
    # The webhook event types whose payload carries a refund.
    refund_events: ClassVar[frozenset[str]] = frozenset()
    # The prefix of the webhook event types whose payload carries a dispute
    # (every event under it must carry a readable one); None: the provider
    # sends no dispute events.
    dispute_event_prefix: ClassVar[str | None] = None

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)

    # -- hooks: what each provider implements ----------------------------------

    @abc.abstractmethod
    def _headers(self) -> dict[str, str]:
        """Authentication and pinned versions, sent with every call."""

    @abc.abstractmethod
    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        """The create call in the provider's units and shapes, or why it cannot be made."""

    @abc.abstractmethod
    def _created(self, submission: RefundSubmission, response: httpx.Response) -> SubmitResult:
        """What a 2xx answer to the create call says."""

    @abc.abstractmethod
    def _error_of(self, response: httpx.Response) -> PseError:
        """The provider's error envelope, read."""

    @abc.abstractmethod
    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | SubmitResult | None:
        """What a 4xx answer to the create call proves.

        A DeclineRule: the refund was not made (the template words the Declined).
        A result: the provider's own conclusion (e.g. after asking for the payment).
        None: not recognised; the outcome stays unanswered.
        """

    def _refuses_credentials(self, status: int, error: PseError) -> bool:
        return status in (401, 403)

    def _in_flight(self, status: int, error: PseError) -> bool:
        """The key stands for a request the PSE may be carrying out or has carried out."""
        return status == 409

    def _error_log_fields(self, error: PseError) -> dict[str, Any]:
        return {"error_code": error.code}

    def _secrets(self) -> tuple[str, ...]:
        """Every configured secret an answer could echo."""
        return (self._account.api_key, *self._account.webhook_secrets)

    @abc.abstractmethod
    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        """The proof a webhook request carries (raises InvalidWebhookSignature when malformed)."""

    @abc.abstractmethod
    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        """The event's id and type (raises InvalidWebhookPayload)."""

    @abc.abstractmethod
    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund | None:
        """The refund a refund event carries (raises UnreadableRefund); None: it carries none."""

    def _carries_refund(self, event_type: str) -> bool:
        return event_type in self.refund_events

    def _carries_dispute(self, event_type: str) -> bool:
        prefix = self.dispute_event_prefix
        return prefix is not None and event_type.startswith(prefix)

    def _event_dispute(self, event_type: str, event: Mapping[str, Any]) -> DisputeReport:
        """The dispute a dispute event carries (raises UnreadableDispute)."""
        raise UnreadableDispute(f"{self.provider} sends no dispute events")

    # -- create -----------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        request = self._create_request(submission)
        if isinstance(request, Declined):
            return request
        answer = await self._send(request)
        if isinstance(answer, Unanswered):
            return answer
        return await self._create_answer(submission, answer)

    async def _create_answer(
        self, submission: RefundSubmission, response: httpx.Response
    ) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            return self._created(submission, response)
        error = self._error_of(response)
        if self._refuses_credentials(status, error):
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(error.message or f"HTTP {status}"),
            )
        if self._in_flight(status, error):
            return self._unanswered(status, error, self.in_flight_note)
        found = (
            await self._research_decline(submission, status, error) if 400 <= status < 500 else None
        )
        if isinstance(found, DeclineRule):
            return Declined(
                code=found.code,
                message=self._safe(error.message or error.code or f"HTTP {status}"),
                offline=found.offline,
                retriable=found.retriable,
            )
        if found is not None:
            return found
        # Anything not proven is left to the look-up: never a guess either way.
        log.warning(
            f"pse.{self.provider}.{self.unrecognised_event}",
            pse_account=self._account.name,
            status_code=status,
            **self._error_log_fields(error),
        )
        return self._unanswered(status, error)

    # -- sending and wording ------------------------------------------------------

    async def _send(self, request: PseRequest) -> httpx.Response | Unanswered:
        """The PSE's answer, or Unanswered when retries ran out without one."""
        try:
            return await self._http.send(
                request.method,
                request.path,
                headers={**self._headers(), **request.headers},
                params=request.params,
                data=request.form,
                json=request.json,
                retry=request.retry,
            )
        except PseNoAnswer as exc:
            if request.retry:
                return Unanswered(self._safe(exc.reason))
            return Unanswered(self._safe(f"{exc.reason}; not retried, the look-up decides"))

    async def _get(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> httpx.Response | Unanswered:
        return await self._send(PseRequest("GET", path, params=params))

    def _safe(self, text: Any) -> str:
        """A PSE's words with every secret and anything shaped like a key taken out."""
        return scrubbed(text, self._secrets(), self.key_pattern)

    def _summary(self, status: int, error: PseError) -> str:
        return self._safe(answer_summary(status, error.code, error.message))

    def _describe(self, response: httpx.Response) -> str:
        return self._summary(response.status_code, self._error_of(response))

    def _unanswered(self, status: int, error: PseError, note: str | None = None) -> Unanswered:
        summary = self._summary(status, error)
        return Unanswered(f"{note}: {summary}" if note else summary)

    def _ours(self, submission: RefundSubmission, mine: Sequence[PseRefund]) -> LookupResult:
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    # -- webhooks -----------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        self._verify(self._webhook_proof(headers, body), now)
        event = json_object(body)
        event_id, event_type = self._event_identity(headers, body, event)
        if self._carries_dispute(event_type):
            return dispute_event(
                event_id, event_type, lambda: self._event_dispute(event_type, event)
            )
        refund: PseRefund | None = None
        if self._carries_refund(event_type):
            try:
                refund = self._event_refund(event_type, event)
            except UnreadableRefund as exc:
                raise InvalidWebhookPayload(
                    f"{event_type} does not carry a readable refund: {exc}"
                ) from None
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify(self, proof: WebhookProof, now: datetime) -> None:
        signed = proof.signed

        def expected(key: bytes) -> bytes:
            if signed is None:
                return key
            return hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii")

        verify_webhook(
            self._account, proof.presented, expected, header=proof.header, key_of=proof.key_of
        )
        if (
            proof.timestamp is not None
            and abs(now.timestamp() - proof.timestamp) > self._account.webhook_tolerance_seconds
        ):
            raise InvalidWebhookSignature(f"{proof.timestamp_name} outside the tolerance")

    @staticmethod
    def _header(headers: Mapping[str, str], name: str, label: str) -> str:
        value = headers.get(name)
        if not value:
            raise InvalidWebhookSignature(f"missing {label} header")
        return value


class RefundResourceGateway(HttpPseGateway):
    """A PSE that keeps refunds as a resource of their own: the create answer
    carries the refund, which is read back by its id or found among the
    payment's refunds by our reference."""

    # Pages read before the look-up gives up; a payment has far fewer refunds.
    max_list_pages: ClassVar[int] = 20

    # -- hooks ----------------------------------------------------------------------

    @abc.abstractmethod
    def _read_refund(self, obj: Any) -> PseRefund:
        """The provider's refund object, translated (raises UnreadableRefund)."""

    @abc.abstractmethod
    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        """Our reference in a refund object, read without reading the rest of it."""

    @abc.abstractmethod
    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str: ...

    @abc.abstractmethod
    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered: ...

    @abc.abstractmethod
    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        """One page of the refund list; a str: why the answer is not such a page."""

    def _no_such_refund(self, response: httpx.Response) -> bool:
        return response.status_code == 404

    def _mismatch(self, submission: RefundSubmission, obj: Any, refund: PseRefund) -> str | None:
        """Why a refund object cannot be taken as ours."""
        if refund.reference is not None and refund.reference != submission.reference:
            return f"refund {refund.pse_refund_id} carries another reference"
        return None

    def _accept_created(
        self, submission: RefundSubmission, obj: Any, refund: PseRefund
    ) -> SubmitResult:
        return Accepted(refund)

    def _cut_short(
        self, submission: RefundSubmission, mine: Sequence[PseRefund], why: str
    ) -> LookupResult:
        """The list could not be read to its end."""
        return Unanswered(why)

    # -- skeleton -------------------------------------------------------------------

    def _readable(self, obj: Any, unreadable: str) -> PseRefund | Unanswered:
        try:
            return self._read_refund(obj)
        except UnreadableRefund as exc:
            return Unanswered(f"{unreadable}: {exc}")

    def _created(self, submission: RefundSubmission, response: httpx.Response) -> SubmitResult:
        obj = json_or_none(response)
        refund = self._readable(obj, f"HTTP {response.status_code} without a readable refund")
        if isinstance(refund, Unanswered):
            return refund
        return self._accept_created(submission, obj, refund)

    def _checked(
        self, submission: RefundSubmission, obj: Any, refund: PseRefund
    ) -> Accepted | Unanswered:
        mismatch = self._mismatch(submission, obj, refund)
        return Unanswered(mismatch) if mismatch is not None else Accepted(refund)

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # No look-up by idempotency key at these PSEs: existence is proven by
        # listing the payment's refunds and matching our reference.
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its PSE id; None when the PSE says there is no such refund."""
        answer = await self._get(self._refund_path(submission, refund_id))
        if isinstance(answer, Unanswered):
            return answer
        if self._no_such_refund(answer):
            return None
        if not 200 <= answer.status_code < 300:
            return Unanswered(self._describe(answer))
        obj = json_or_none(answer)
        refund = self._readable(obj, f"unreadable refund {refund_id}")
        if isinstance(refund, Unanswered):
            return refund
        return self._checked(submission, obj, refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        listing = self._refund_listing(submission)
        if isinstance(listing, Unanswered):
            return listing
        params = listing.params
        mine: list[PseRefund] = []
        for _ in range(self.max_list_pages):
            answer = await self._get(listing.path, params)
            if isinstance(answer, Unanswered):
                return answer
            if not 200 <= answer.status_code < 300:
                # A 404 or "no such id" here may be an account or mode mismatch:
                # it must not pass for proof that no refund exists.
                return Unanswered(self._describe(answer))
            page = self._list_page(json_or_none(answer), params)
            if isinstance(page, str):
                return Unanswered(page)
            for item in page.items:
                if isinstance(item, Mapping) and self._reference_of(item) == submission.reference:
                    refund = self._readable(item, "unreadable refund in the list")
                    if isinstance(refund, Unanswered):
                        return refund
                    mine.append(refund)
            if page.stuck is not None:
                return self._cut_short(submission, mine, page.stuck)
            if page.following is None:
                # Every page is read: the newest match may be a failed one while
                # an older one under the same reference paid the customer.
                return self._ours(submission, mine)
            params = page.following
        return self._cut_short(
            submission, mine, f"more than {self.max_list_pages} pages of refunds for the payment"
        )
