"""Request context: X-Request-ID, body size limits, access log, last-resort errors.

A plain ASGI middleware (not BaseHTTPMiddleware): it adds no task or copy per
request on the hot path.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import problems
from app.api.problems import PROBLEM_JSON, problem_body, problem_bytes
from app.domain.ports import AuditSink

log = structlog.get_logger("app.api")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so the framework's body reader
    lets it through unchanged and it is answered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body may be at most {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from `receive` when a body does not arrive in time; answered as 408."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the body did not arrive within {seconds:g} s")


# Where people read pages (the console): refusals made before it answers are pages too.
PAGE_PATHS = ("/console",)


async def send_refusal(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a request refused before any route ran: problem+json, or a bare
    page under the console."""
    request_id = scope.get("state", {}).get("request_id") or ""
    if scope["path"].startswith(PAGE_PATHS):
        body = _refusal_page(status, code, title, detail, request_id)
        kind = _PAGE_HEADERS
    else:
        body = problem_bytes(problem_body(status, code, title, detail, request_id))
        kind = [(b"content-type", PROBLEM_JSON.encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*kind, *(headers or ()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = 1_048_576,
        max_upload_bytes: int = 2 * 1024**3,
        upload_paths: tuple[str, ...] = ("/v1/reconciliations",),
        audit: AuditSink | None = None,
        body_timeout_seconds: float = 30.0,
        unavailable: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.app = app
        # Tells the database being out of reach (503) from a failure (500):
        # handed by the composition root (Container.unavailable); without it
        # every error is a failure.
        self.unavailable = unavailable or _never
        self.audit = audit
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths
        self.body_timeout = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        request_id = request_id or uuid.uuid4().hex
        upload = scope["path"].startswith(self.upload_paths)
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, **_path_ids(scope["path"]))
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        status_holder: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
                status_holder["status"] = message["status"]
            await send(message)

        async def problem(status: int, code: str, title: str, detail: str) -> None:
            await send_refusal(scope, send_with_id, status, code, title, detail)

        query = scope.get("query_string", b"")
        if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
            # NUL cannot be an id nor a filter value, and cannot be stored.
            await problem(
                422, "validation_error", "The request is not valid", "NUL is not allowed in a URL"
            )
            return
        if any(b"\x00" in value for _name, value in scope.get("headers", ())):
            # Headers are kept in the audit log and some are stored (Idempotency-Key).
            await problem(
                422,
                "validation_error",
                "The request is not valid",
                "NUL is not allowed in a header",
            )
            return

        if content_length is not None and content_length > limit:
            await problem(
                413,
                "payload_too_large",
                "Request body too large",
                f"the body may be at most {limit} bytes",
            )
            return

        received = 0
        audited = self.audit is not None and _audited(scope["path"])
        request_body = bytearray()
        response_body = bytearray()

        # A body must arrive in time: whole, or for settlement uploads (which
        # may take long) each chunk. A client trickling bytes holds nothing long.
        deadline = None if upload else time.monotonic() + self.body_timeout

        async def limited_receive() -> Message:
            nonlocal received
            wait = self.body_timeout if deadline is None else deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(wait, 0.001)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge(limit)
                if audited and len(request_body) < _AUDIT_REQUEST_BYTES:
                    request_body.extend(chunk[: _AUDIT_REQUEST_BYTES - len(request_body)])
            return message

        async def send_and_keep(message: Message) -> None:
            if message["type"] == "http.response.body" and (
                len(response_body) < _AUDIT_RESPONSE_BYTES
            ):
                chunk = message.get("body", b"")
                response_body.extend(chunk[: _AUDIT_RESPONSE_BYTES - len(response_body)])
            await send_with_id(message)

        outbound = send_and_keep if audited else send_with_id

        try:
            await self.app(scope, limited_receive, outbound)
        except BodyTimeout:
            if status_holder["status"] is None:
                await problem(
                    408,
                    "request_timeout",
                    "Request body too slow",
                    f"the body did not arrive within {self.body_timeout:g} s",
                )
        except BodyTooLarge:
            if status_holder["status"] is None:
                await problem(
                    413,
                    "payload_too_large",
                    "Request body too large",
                    f"the body may be at most {limit} bytes",
                )
        except Exception as exc:
            # The database out of reach, wherever it was found (a route's
            # handler answers its own; here what ran outside the routes, such
            # as the guard looking up a key): 503 with Retry-After, never 500.
            # Followed through what wrapped it (the framework re-raises, as a
            # RuntimeError, an error whose page the console already sent).
            cause: BaseException | None = exc
            while cause is not None and not self.unavailable(cause):
                cause = cause.__cause__
            if cause is not None:
                problems.log_unavailable(cause)
                if status_holder["status"] is None:
                    await send_refusal(
                        scope,
                        send_with_id,
                        *problems.UNAVAILABLE,
                        headers=[
                            (name.lower().encode(), value.encode())
                            for name, value in problems.UNAVAILABLE_HEADERS.items()
                        ],
                    )
            else:
                log.exception("request.failed", error_type=type(exc).__name__)
                if status_holder["status"] is None:
                    await problem(
                        500,
                        "internal_error",
                        "Internal error",
                        "the request failed; it is logged under its request id",
                    )
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status=status_holder["status"],
                duration_ms=duration_ms,
            )
            if audited and self.audit is not None:
                self._audit_request(
                    scope, status_holder["status"], duration_ms, request_body, response_body
                )

    def _audit_request(
        self,
        scope: Scope,
        status: int | None,
        duration_ms: float,
        request_body: bytearray,
        response_body: bytearray,
    ) -> None:
        assert self.audit is not None
        state = scope.get("state", {})
        if state.get("api_key_id") is None or state.get("refusal") is not None:
            # Nobody known sent it, or it was refused before any route ran:
            # a small summary, never its body, and only so many a minute.
            self.audit.record_refusal(
                "api.refused",
                {
                    "method": scope["method"],
                    "path": scope["path"][:200],
                    "source": _source(scope),
                    "reason": state.get("refusal") or f"status_{status}",
                    "status": status,
                    "size": len(request_body) or _content_length(scope),
                    "principal": state.get("api_key_id"),
                },
            )
            return
        refund_id, payment_id = _ids_of(scope["path"], response_body)
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _AUDITED_HEADERS
        }
        self.audit.record(
            "api.request",
            {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1") or None,
                "status": status,
                "duration_ms": duration_ms,
                "principal": state.get("api_key_id"),
                "headers": headers,
                "request_body": _text(request_body, _AUDIT_REQUEST_BYTES),
                "response_body": _text(response_body, _AUDIT_RESPONSE_BYTES),
            },
            refund_id=refund_id,
            payment_id=payment_id,
            actor=state.get("api_key_id"),
        )


def _never(_exc: BaseException) -> bool:
    return False


_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def _refusal_page(status: int, code: str, title: str, detail: str, request_id: str) -> bytes:
    """A bare page for a refusal made before the console could answer."""
    title, detail = html.escape(title), html.escape(detail)
    return (
        f'<!doctype html><html lang="en"><meta charset="utf-8">'
        f"<title>{title}</title><h1>{title}</h1><p>{detail[:1].upper()}{detail[1:]}.</p>"
        f"<p>Code <code>{html.escape(code)}</code> · request id "
        f"<code>{html.escape(request_id)}</code> · status {status}</p></html>"
    ).encode()


_AUDIT_REQUEST_BYTES = 64 * 1024
_AUDIT_RESPONSE_BYTES = 16 * 1024
_AUDITED_HEADERS = frozenset(
    {b"idempotency-key", b"content-type", b"user-agent", b"x-forwarded-for", b"idempotent-replayed"}
)


def _source(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _audited(path: str) -> bool:
    # PSE webhooks are audited by their service, with their verification result.
    return path.startswith("/v1/") and not path.startswith("/v1/webhooks/")


def _text(body: bytearray, cap: int) -> str | None:
    if not body:
        return None
    text = bytes(body).decode("utf-8", errors="replace")
    return text + "…[truncated]" if len(body) >= cap else text


def _ids_of(path: str, response_body: bytearray) -> tuple[str | None, str | None]:
    """The refund and payment a request concerns: from its path, else its answer."""
    refund_id = payment_id = None
    parts = path.split("/")
    if len(parts) > 3 and parts[2] == "refunds":
        refund_id = parts[3]
    elif len(parts) > 3 and parts[2] == "payments":
        payment_id = parts[3]
    if (refund_id is None or payment_id is None) and response_body[:1] == b"{":
        try:
            answer = json.loads(response_body)
        except ValueError:
            return refund_id, payment_id
        if isinstance(answer, dict):
            found = answer.get("id")
            if isinstance(found, str):
                if found.startswith("rf_") and refund_id is None:
                    refund_id = found
                elif found.startswith("pay_") and payment_id is None:
                    payment_id = found
            linked = answer.get("payment_id")
            if isinstance(linked, str) and payment_id is None:
                payment_id = linked
    return refund_id, payment_id


def _path_ids(path: str) -> dict[str, str]:
    """What a request's path says it concerns, for its log lines."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v1":
        key = {"refunds": "refund_id", "payments": "payment_id", "webhooks": "pse_account"}.get(
            parts[2]
        )
        if key and parts[3]:
            return {key: parts[3][:64]}
    return {}
