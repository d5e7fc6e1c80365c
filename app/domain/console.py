"""Console sessions: who is signed in to the console, and until when.

A session is known by the hash of its token (the token itself lives only in
the person's cookie), belongs to one API key and ends after a spell of
inactivity or, whatever the activity, a fixed time after it opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class SessionEnd(StrEnum):
    """Why a session can no longer be used."""

    IDLE = "idle"  # no request for longer than the idle limit
    ABSOLUTE = "absolute"  # open for longer than the absolute limit
    REVOKED = "revoked"  # its API key was revoked


@dataclass(frozen=True, slots=True)
class SessionLimits:
    idle: timedelta = timedelta(minutes=30)
    absolute: timedelta = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Flash:
    """A message kept for the next page a session sees (after a redirect)."""

    kind: str  # "ok" | "error" | "info"
    text: str
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "code": self.code}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flash:
        return cls(str(data.get("kind", "info")), str(data.get("text", "")), data.get("code"))


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    token_hash: str
    api_key_id: str
    created_at: datetime
    last_seen_at: datetime
    csrf_token: str
    flashes: tuple[Flash, ...] = field(default=())

    def ended(self, now: datetime, limits: SessionLimits) -> SessionEnd | None:
        """Why the session is over at `now`, or None while it may be used."""
        if now - self.created_at >= limits.absolute:
            return SessionEnd.ABSOLUTE
        if now - self.last_seen_at >= limits.idle:
            return SessionEnd.IDLE
        return None
