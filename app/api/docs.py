"""OpenAPI helpers: every route declares the problems it can answer."""

from __future__ import annotations

from typing import Any

from app.api.schemas import Problem

_CODES: dict[int, str] = {
    400: "Bad request",
    401: "`unauthorized`: missing, unknown or revoked API key",
    403: "`forbidden`: the key lacks the role",
    404: "`not_found`",
    409: "Conflict",
    413: "`payload_too_large`",
    422: "`validation_error`: the body, query or headers are not valid",
}


def problems(*entries: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """`problems(401, (409, "`invalid_state`"))` → OpenAPI responses with problem+json bodies."""
    result: dict[int | str, dict[str, Any]] = {}
    for entry in entries:
        status, text = entry if isinstance(entry, tuple) else (entry, _CODES[entry])
        if status in result:
            text = f"{result[status]['description']}; {text}"
        result[status] = {
            "model": Problem,
            "description": text,
            "content": {
                "application/problem+json": {
                    "example": {
                        "type": f"https://docs.pse-refunds.dev/errors/{_first_code(text)}",
                        "title": "…",
                        "status": status,
                        "detail": "…",
                        "code": _first_code(text),
                        "request_id": "5f0c6c1e2b7a4d3e9a1f0b2c3d4e5f60",
                    }
                }
            },
        }
    return result


def _first_code(text: str) -> str:
    if "`" in text:
        return text.split("`")[1]
    return "error"


AUTH = (401, 403)
