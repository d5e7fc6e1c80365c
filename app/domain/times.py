"""Times the service takes in: aware, in UTC, within years 1970-2999.

Beyond those years a time is no real settlement, dispute or search bound,
and arithmetic on it overflows: `datetime(1, 1, 1, tzinfo=+01:00)` has no
UTC form at all, and windows and SLAs added to year 9999 pass its end.
Every way a time comes in (the API, the console, settlement files, PSE
payloads, the CLI) is checked here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

EARLIEST_YEAR, LATEST_YEAR = 1970, 2999
RANGE = f"between {EARLIEST_YEAR} and {LATEST_YEAR}"


def in_range(day: date) -> bool:
    """Whether `day` (a date, or a time's own date) is within years 1970-2999."""
    return EARLIEST_YEAR <= day.year <= LATEST_YEAR


def in_utc(moment: datetime) -> datetime | None:
    """An aware `moment` in UTC; None when it is outside years 1970-2999 (in
    UTC or in its own zone), or has no UTC form."""
    if moment.tzinfo is UTC and EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
        return moment  # as most come (a settlement file's million), at one check
    if not in_range(moment):
        return None
    try:
        found = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return found if in_range(found) else None
