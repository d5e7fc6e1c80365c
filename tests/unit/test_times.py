"""Times the service takes in: aware, in UTC, within years 1970-2999."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.domain.times import in_utc

PLUS_ONE = timezone(timedelta(hours=1))
MINUS_ONE = timezone(timedelta(hours=-1))
JST = timezone(timedelta(hours=9))


def test_a_time_in_range_comes_back_in_utc() -> None:
    moment = in_utc(datetime(2026, 11, 27, 17, 0, tzinfo=JST))
    assert moment == datetime(2026, 11, 27, 8, 0, tzinfo=UTC) and moment.tzinfo is UTC
    assert in_utc(datetime(1970, 1, 1, tzinfo=UTC)) == datetime(1970, 1, 1, tzinfo=UTC)
    assert in_utc(datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)) is not None


@pytest.mark.parametrize(
    "moment",
    [
        # No UTC form at all: astimezone() raises OverflowError on these.
        datetime(1, 1, 1, tzinfo=PLUS_ONE),
        datetime(9999, 12, 31, 23, 59, tzinfo=MINUS_ONE),
        # Representable, but no settlement, dispute or search bound.
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(3000, 1, 1, tzinfo=UTC),
        # In range in one zone, out of it in the other.
        datetime(2999, 12, 31, 23, 30, tzinfo=MINUS_ONE),
        datetime(1970, 1, 1, 0, 30, tzinfo=PLUS_ONE),
    ],
)
def test_a_time_beyond_the_years_or_without_a_utc_form_is_none(moment: datetime) -> None:
    assert in_utc(moment) is None
