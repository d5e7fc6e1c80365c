"""Databases of their own for the end-to-end tests, on the session's server
(the machine's PostgreSQL or the embedded one), dropped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import scratch_database


@pytest.fixture
async def fresh_database(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A migrated database, as a `database_url`."""
    async with scratch_database(pg_admin_dsn, "refunds_e2e") as url:
        yield url


@pytest.fixture
async def empty_database(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A database with no schema at all, as a `database_url`."""
    async with scratch_database(pg_admin_dsn, "refunds_e2e", migrated=False) as url:
        yield url
