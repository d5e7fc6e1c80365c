"""structlog: JSON lines in production, readable lines in the demo.

The request id (and refund, payment and account ids where known) is bound
through contextvars, so every line of a request carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from app.redaction import Redactor


class _CurrentStderr:
    """Whatever sys.stderr is at the time of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _redacting(redactor: Redactor) -> structlog.types.Processor:
    def redact(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in event.items():
            if isinstance(value, str | dict | list | tuple):
                event[key] = redactor.value(value)
        return event

    return redact


def configure_logging(
    fmt: str = "json", level: str = "info", redactor: Redactor | None = None
) -> None:
    """Configure structlog. Every line is redacted: the configuration's secrets,
    anything shaped like an API key or credentials, and card numbers."""
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redacting(redactor or Redactor()),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
