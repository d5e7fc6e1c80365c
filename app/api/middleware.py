"""Request context: X-Request-ID, body size limits, access log, last-resort errors.

A plain ASGI middleware (not BaseHTTPMiddleware): it adds no task or copy per
request on the hot path.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import PROBLEM_JSON, problem_body, problem_bytes
from app.domain.ports import AuditSink

log = structlog.get_logger("app.api")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so the framework's body reader
    lets it through unchanged and it is answered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body may be at most {limit} bytes")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = 1_048_576,
        max_upload_bytes: int = 2 * 1024**3,
        upload_paths: tuple[str, ...] = ("/v1/reconciliations",),
        audit: AuditSink | None = None,
        # Where people read pages (the console): refusals made here are pages too.
        page_paths: tuple[str, ...] = ("/console",),
    ) -> None:
        self.app = app
        self.audit = audit
        self.page_paths = page_paths
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths

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
        limit = (
            self.max_upload_bytes
            if scope["path"].startswith(self.upload_paths)
            else self.max_body_bytes
        )
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
            if scope["path"].startswith(self.page_paths):
                body = _refusal_page(status, code, title, detail, request_id)
                headers = _PAGE_HEADERS
            else:
                body = problem_bytes(problem_body(status, code, title, detail, request_id))
                headers = [(b"content-type", PROBLEM_JSON.encode())]
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
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
        except BodyTooLarge:
            if status_holder["status"] is None:
                await problem(
                    413,
                    "payload_too_large",
                    "Request body too large",
                    f"the body may be at most {limit} bytes",
                )
        except Exception as exc:
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
