"""The same scenarios against every PSE adapter (see conformance.py)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

import tests.adapters.cases as cases_package
from app.domain.ports import (
    Accepted,
    Declined,
    InvalidWebhookSignature,
    NotFound,
    PseGateway,
    PseRefundState,
    Unanswered,
)
from tests.adapters.conformance import BASE_URL, REFERENCE, ProviderCase


def _cases() -> list[ProviderCase]:
    found = []
    for module in pkgutil.iter_modules(cases_package.__path__):
        found.append(importlib.import_module(f"{cases_package.__name__}.{module.name}").CASE)
    return sorted(found, key=lambda c: c.name)


CASES = _cases()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> ProviderCase:
    return request.param


@pytest.fixture
async def gateway(case: ProviderCase) -> AsyncIterator[PseGateway]:
    async with httpx.AsyncClient() as http:
        yield case.gateway(case.account(), http)


@pytest.fixture
def router() -> AsyncIterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=True) as mock:
        yield mock


def now() -> datetime:
    return datetime.now(UTC)


def test_every_provider_has_a_case():
    assert {c.name for c in CASES} == {
        "sandbox",
        "stripe",
        "komoju",
        "payjp",
        "xendit",
        "razorpay",
        "omise",
    }


async def test_a_refund_the_pse_accepts_is_accepted(case, gateway, router):
    case.mock_create(router, PseRefundState.PENDING)
    result = await gateway.create_refund(case.submission())
    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == case.expected_pse_refund_id()
    assert result.refund.state in (PseRefundState.PENDING, PseRefundState.SUCCEEDED)


async def test_a_pending_refund_is_settled_by_its_signed_webhook(case, gateway, router):
    case.mock_create(router, PseRefundState.PENDING)
    created = await gateway.create_refund(case.submission())
    assert isinstance(created, Accepted)
    hook = case.webhook(PseRefundState.SUCCEEDED, case.secrets[0])
    event = gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
    assert event.refund is not None
    assert event.refund.state is PseRefundState.SUCCEEDED
    assert (
        event.refund.pse_refund_id == created.refund.pse_refund_id
        or event.refund.reference == REFERENCE
    )


async def test_more_than_the_refundable_amount_is_declined_for_good(case, gateway, router):
    case.mock_create_rejected(router, "amount_too_large")
    result = await gateway.create_refund(case.submission())
    assert isinstance(result, Declined)
    assert result.code == "amount_exceeds_refundable"
    assert not result.offline and not result.retriable


async def test_a_refund_past_the_window_is_declined_for_an_offline_payout(case, gateway, router):
    case.mock_create_rejected(router, "window_passed")
    result = await gateway.create_refund(case.submission())
    assert isinstance(result, Declined)
    assert result.offline is True


async def test_a_timeout_then_a_look_up_that_finds_it(case, gateway, router):
    case.mock_create_timeout(router)
    assert isinstance(await gateway.create_refund(case.submission()), Unanswered)
    case.mock_lookup_found(router, PseRefundState.SUCCEEDED)
    found = await gateway.find_refund(case.submission())
    assert isinstance(found, Accepted)
    assert found.refund.pse_refund_id == case.expected_pse_refund_id()
    assert found.refund.state is PseRefundState.SUCCEEDED


async def test_a_timeout_then_a_look_up_that_finds_nothing(case, gateway, router):
    case.mock_create_timeout(router)
    assert isinstance(await gateway.create_refund(case.submission()), Unanswered)
    case.mock_lookup_empty(router)
    assert isinstance(await gateway.find_refund(case.submission()), NotFound)


async def test_a_forged_webhook_is_refused(case, gateway):
    hook = case.webhook(PseRefundState.SUCCEEDED, "whsec_" + "Zm9yZ2VkLXNlY3JldC0xMjM0NTY3OA==")
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
    if not getattr(case, "signs_body", True):
        return
    real = case.webhook(PseRefundState.SUCCEEDED, case.secrets[0])
    tampered = (
        real.body.replace(b"succeeded", b"failed")
        if b"succeeded" in real.body
        else (real.body + b" ")
    )
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook({k.lower(): v for k, v in real.headers.items()}, tampered, now())


async def test_a_webhook_signed_with_the_previous_secret_is_accepted(case, gateway):
    hook = case.webhook(PseRefundState.SUCCEEDED, case.secrets[1])
    event = gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
    assert event.refund is not None and event.refund.state is PseRefundState.SUCCEEDED
