"""Fixtures shared by the PSE adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from tests.adapters.conformance import BASE_URL


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain client: respx answers every request the adapters make."""
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Provider routes on loopback; a test asserts on the routes it uses."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock
