"""Links between the pages of a list: cursors written as the API writes them
(`next_cursor`), and addresses that keep the list's filters.

A cursor is opaque to people and never holds a secret: an id the next page
starts after.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from urllib.parse import urlencode

from app.domain.errors import InvalidInput

_PREFIX = "c1:"
MAX_CURSOR_LENGTH = 200


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The id a page link starts after; InvalidInput for one the console did not write."""
    if not cursor:
        return None
    raw = ""
    if len(cursor) <= MAX_CURSOR_LENGTH:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
    if not raw.startswith(_PREFIX) or len(raw) == len(_PREFIX):
        raise InvalidInput("this page link is not one the console gave: start again from the list")
    return raw[len(_PREFIX) :]


def link(path: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """`path` with `params` as its query (empty values left out)."""
    kept = [(name, value) for name, value in params if value]
    return f"{path}?{urlencode(kept)}" if kept else path
