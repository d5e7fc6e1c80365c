"""Identifiers: a prefix, then the creation time in milliseconds and randomness.

Ids sort by creation time, which gives lists a stable newest-first order and
simple cursors without a second column.
"""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(8)}"
