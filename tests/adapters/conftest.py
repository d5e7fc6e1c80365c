"""Fixtures shared by the PSE adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain client: respx answers every request the adapters make."""
    async with httpx.AsyncClient() as client:
        yield client
