"""Redaction of secrets and card numbers before anything is stored or logged.

Known secrets (API keys, PSE secrets, webhook secrets) are replaced wherever
they appear; anything shaped like a service API key is masked; a card number
(13-19 digits passing the Luhn check, with or without spaces or dashes) keeps
at most its first six and last four digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
_API_KEY = re.compile(r"prk_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_DIGITS_RUN = re.compile(r"[0-9][0-9 -]{11,}[0-9]")
_PAN = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return match.group(0)
    return f"{digits[:6]}{'*' * (len(digits) - 10)}{digits[-4:]}"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def add(self, *secrets: str) -> None:
        self._secrets = sorted(
            {*self._secrets, *(s for s in secrets if s and len(s) >= 6)}, key=len, reverse=True
        )

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        # Cheap tests first: most values hold none of these.
        if "earer" in value or "asic" in value or "EARER" in value or "ASIC" in value:
            value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        if "prk_" in value:
            value = _API_KEY.sub(REDACTED, value)
        if _DIGITS_RUN.search(value):
            value = _PAN.sub(_mask_pan, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        return {
            name.lower(): REDACTED if name.lower() in SENSITIVE_HEADERS else self.text(value)
            for name, value in headers
        }
