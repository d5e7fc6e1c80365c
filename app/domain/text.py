"""Text the service can store, log and forward.

PostgreSQL refuses NUL in text and JSON, and UTF-8 cannot encode a lone
surrogate (`"\\ud800"` is valid JSON but no character): either would fail
deep in a write. Every way text comes in checks it here first, so it is a
client's error, said before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "text must not contain NUL (\\u0000)"
    return f"text must be valid Unicode: lone surrogate \\u{ord(found.group()):04x}"


def first_text_problem(texts: Iterable[str | None]) -> str | None:
    for text in texts:
        if text is not None:
            problem = text_problem(text)
            if problem is not None:
                return problem
    return None


def is_ascii_digits(text: str) -> bool:
    """One or more of the ten digits 0-9. `str.isdigit` also says yes to "²",
    which `int` refuses, and to "١٢", which it reads as 12: numbers that
    programs write (cursors, amounts in files) use these ten only."""
    return text.isascii() and text.isdigit()


def row_id(text: str) -> int | None:
    """The id of a row (a page cursor) written as ASCII digits, at most 18 of
    them so that it fits 64 bits; None for any other text."""
    return int(text) if len(text) <= 18 and is_ascii_digits(text) else None
