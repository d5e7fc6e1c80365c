"""Shared plumbing for PSE adapters: account settings and a retrying HTTP sender.

Retries (tenacity) cover timeouts, connection errors, 5xx and 429, with
exponential backoff and jitter, up to the account's `max_attempts`. A 4xx is
an answer and is never retried. Every retry reuses the same request, so the
same idempotency key: that is what makes a retry safe.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from app.domain.pse import (
    Accepted,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    NotFound,
    PseRefund,
    PseRefundState,
)
from app.domain.text import is_ascii_digits
from app.redaction import REDACTED

log = structlog.get_logger("app.pse")


@dataclass(frozen=True, slots=True)
class PseAccount:
    """One configured PSE account (`[accounts.<name>]`), secrets already resolved."""

    name: str
    provider: str
    api_key: str
    base_url: str
    webhook_secrets: tuple[str, ...] = ()
    refund_window_days: int | None = None
    timeout_seconds: float = 10.0
    max_attempts: int = 4
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    webhook_tolerance_seconds: int = 300
    # Provider-specific extras (e.g. Razorpay's key id) without widening this class.
    options: Mapping[str, str] = field(default_factory=dict)
    # Told of every retry (for metrics); not part of the account's identity.
    on_retry: Callable[[], None] | None = field(default=None, compare=False, repr=False)


class PseNoAnswer(Exception):
    """Retries ran out without a definitive answer (timeout, connection error, 5xx, 429)."""

    def __init__(self, reason: str, response: httpx.Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class RetryingHttp:
    """Sends one logical request to a PSE, retrying what is safe to retry."""

    def __init__(self, account: PseAccount, client: httpx.AsyncClient) -> None:
        self.account = account
        self.client = client

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: bool = True,
    ) -> httpx.Response:
        """Return the first response that is an answer (2xx-4xx except 429).

        Raises PseNoAnswer when every attempt timed out, failed to connect, or
        got 5xx/429.
        """
        url = self.account.base_url.rstrip("/") + path
        attempts = self.account.max_attempts if retry else 1
        attempt_no = 0

        async def attempt() -> httpx.Response:
            nonlocal attempt_no
            attempt_no += 1
            started = time.perf_counter()
            try:
                response = await self.client.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    params=params,
                    data=data,
                    json=json,
                    timeout=self.account.timeout_seconds,
                )
            except httpx.TimeoutException:
                log.warning(
                    "pse.call.timeout",
                    pse_account=self.account.name,
                    method=method,
                    path=path,
                    attempt=attempt_no,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                raise
            except httpx.TransportError as exc:
                log.warning(
                    "pse.call.connection_error",
                    pse_account=self.account.name,
                    method=method,
                    path=path,
                    attempt=attempt_no,
                    error=type(exc).__name__,
                )
                raise
            log.info(
                "pse.call",
                pse_account=self.account.name,
                method=method,
                path=path,
                attempt=attempt_no,
                status_code=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            if _is_retryable_status(response.status_code):
                raise _RetryableStatus(response)
            return response

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(
                (httpx.TimeoutException, httpx.TransportError, _RetryableStatus)
            ),
            wait=wait_random_exponential(
                multiplier=self.account.backoff_initial_seconds,
                max=self.account.backoff_max_seconds,
            ),
            stop=stop_after_attempt(attempts),
            reraise=False,
            before_sleep=lambda _state: self.account.on_retry() if self.account.on_retry else None,
        )
        try:
            async for try_ in retrying:
                with try_:
                    return await attempt()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if isinstance(last, _RetryableStatus):
                raise PseNoAnswer(
                    f"HTTP {last.response.status_code} after {attempt_no} attempts",
                    last.response,
                ) from None
            if isinstance(last, httpx.TimeoutException):
                raise PseNoAnswer(f"timeout after {attempt_no} attempts") from None
            raise PseNoAnswer(f"{type(last).__name__} after {attempt_no} attempts") from None
        raise AssertionError("unreachable")  # pragma: no cover


# How much of a PSE's message is kept in a refund's failure or a log line.
MESSAGE_MAX_CHARS = 500


def scrubbed(text: Any, secrets: Iterable[str], key_shape: re.Pattern[str]) -> str:
    """A PSE's words, safe to store, log or show: each of `secrets`, and anything
    shaped like the provider's keys (masked or not), replaced; cut to
    MESSAGE_MAX_CHARS."""
    value = str(text)
    for secret in secrets:
        if secret:
            value = value.replace(secret, REDACTED)
    return key_shape.sub(REDACTED, value)[:MESSAGE_MAX_CHARS]


def answer_summary(status: int, code: Any, message: Any) -> str:
    """`HTTP 400 code: message`, leaving out what the answer did not say."""
    text = f"HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message}"
    return text


def json_or_none(response: httpx.Response) -> Any:
    """The decoded JSON body, or None when the body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


# One reference with several refunds at a PSE: the one that moved money is the
# truth. Reporting the newest instead (often a failed retry) would free an
# amount that was paid out and invite a resend or an offline payout on top.
_MONEY_MOVED_FIRST = {
    PseRefundState.SUCCEEDED: 0,
    PseRefundState.PENDING: 1,
    PseRefundState.FAILED: 2,
}


def ours_among(
    matches: Iterable[PseRefund], *, pse_account: str, reference: str
) -> Accepted | NotFound:
    """What a look-up by our reference found, from every refund the PSE holds
    under it (in the PSE's own order).

    Money moved wins: succeeded, then pending, then failed; among equals the
    PSE's order decides. When more than one of them moved money, the PSE made
    the refund twice: the others travel in `Accepted.other_money_moving`, so
    the service applies the chosen one and asks a person about the rest.
    """
    distinct: dict[str, PseRefund] = {}
    for refund in matches:
        # Offset-paged lists can show one refund twice when a new one shifts them.
        distinct.setdefault(refund.pse_refund_id, refund)
    if not distinct:
        return NotFound()
    ranked = sorted(distinct.values(), key=lambda r: _MONEY_MOVED_FIRST[r.state])
    chosen, others = ranked[0], ranked[1:]
    moved = tuple(r for r in others if r.state is not PseRefundState.FAILED)
    if others:
        report = log.error if moved else log.warning
        report(
            "pse.several_refunds_for_reference",
            pse_account=pse_account,
            reference=reference,
            chosen=chosen.pse_refund_id,
            pse_refund_ids=[r.pse_refund_id for r in ranked],
            money_moving=[r.pse_refund_id for r in (chosen, *moved)],
        )
    return Accepted(chosen, other_money_moving=moved)


# --------------------------------------------------------------------------
# Webhook authentication
# --------------------------------------------------------------------------


def utf8_key(secret: str) -> bytes | None:
    """The key of a secret used as it is configured."""
    return secret.encode("utf-8")


def unix_seconds(text: str, name: str) -> int:
    """A webhook's signing time, as PSEs write it: Unix seconds in ASCII
    digits, at most 12 of them. Anything else (a sign, spaces, "²", thousands of
    digits that `int` refuses or that no float holds) is refused as `name`."""
    if len(text) > 12 or not is_ascii_digits(text):
        raise InvalidWebhookSignature(f"{name} is not a Unix time")
    return int(text)


def verify_webhook(
    account: PseAccount,
    presented: Iterable[bytes],
    expected: Callable[[bytes], bytes],
    *,
    header: str,
    key_of: Callable[[str], bytes | None] = utf8_key,
) -> None:
    """Accept a webhook only if one `presented` value (signature or token) equals
    `expected(key)` for the key of one of the account's webhook secrets; raise
    InvalidWebhookSignature otherwise.

    `key_of` turns a configured secret into its key (None: unusable). An empty
    secret or key never verifies anything: an HMAC keyed with nothing can be
    computed by anyone, and an empty token equals an empty header. An empty
    presented value is never compared either. Every pair is compared in
    constant time and none stops early, so timing does not tell which matched.
    """
    keys: list[bytes] = []
    for secret in account.webhook_secrets:
        key = key_of(secret) if secret else None
        if not key:
            log.error("pse.webhook.unusable_secret", pse_account=account.name, header=header)
            continue
        keys.append(key)
    given = [value for value in presented if value]
    if not keys:
        raise InvalidWebhookSignature(f"no usable webhook secret to check {header}")
    if not given:
        raise InvalidWebhookSignature(f"{header} is empty")
    matched = False
    for key in keys:
        want = expected(key)
        if not want:
            continue
        for candidate in given:
            matched |= hmac.compare_digest(want, candidate)
    if not matched:
        raise InvalidWebhookSignature(f"{header} matches no configured webhook secret")


def ids_in(obj: Mapping[str, Any], *keys: str) -> tuple[str, ...]:
    """The ids a PSE object names under `keys` (a plain id, or an expanded
    object's `id`), for telling which payment a refund belongs to."""
    found: list[str] = []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, Mapping):
            value = value.get("id")
        if isinstance(value, str) and value:
            found.append(value)
    return tuple(found)


def json_object(body: bytes) -> Mapping[str, Any]:
    """A webhook body as a JSON object, or InvalidWebhookPayload."""
    try:
        event = json.loads(body)
    except ValueError:
        raise InvalidWebhookPayload("body is not JSON") from None
    if not isinstance(event, Mapping):
        raise InvalidWebhookPayload("body is not a JSON object")
    return event


@dataclass(frozen=True, slots=True)
class DeclineRule:
    """How a provider's refusal maps to a `Declined`: our code, and whether the
    refund must be paid out offline or may be sent again later."""

    code: str
    offline: bool = False
    retriable: bool = False
