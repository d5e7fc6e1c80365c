"""Request context: X-Request-ID, body size limits, access log, last-resort errors.

A plain ASGI middleware (not BaseHTTPMiddleware): it adds no task or copy per
request on the hot path.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import PROBLEM_JSON, problem_body, problem_bytes

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
    ) -> None:
        self.app = app
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
        structlog.contextvars.bind_contextvars(request_id=request_id)
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        status_holder: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
                status_holder["status"] = message["status"]
            await send(message)

        async def problem(status: int, code: str, title: str, detail: str) -> None:
            body = problem_bytes(problem_body(status, code, title, detail, request_id))
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        if content_length is not None and content_length > limit:
            await problem(
                413,
                "payload_too_large",
                "Request body too large",
                f"the body may be at most {limit} bytes",
            )
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
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
            log.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status=status_holder["status"],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
