"""The same scenarios against every PSE adapter (see conformance.py)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

import tests.adapters.cases as cases_package
from app.domain.disputes import DisputeStatus
from app.domain.ports import PseGateway
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    NotFound,
    PseRefundState,
    PseWebhookEvent,
    Unanswered,
)
from tests.adapters.conformance import (
    BASE_URL,
    DISPUTE_FIELDS,
    REFERENCE,
    DisputeCase,
    ProviderCase,
    SignedWebhook,
)


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


async def test_a_webhooks_refund_names_its_payment_and_amount(case, gateway, router):
    # What lets the service trust a reference only when the payment and amount agree.
    hook = case.webhook(PseRefundState.SUCCEEDED, case.secrets[0])
    event = gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
    assert event.refund is not None
    assert case.submission().pse_payment_id in event.refund.pse_payment_ids
    assert event.refund.amount == case.submission().amount


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


# KOMOJU and Omise list no failed refunds (theirs have no failure status):
# the scenario has nothing to choose between there.
LISTING_FAILURES = [c for c in CASES if PseRefundState.FAILED in c.listed_states]


@pytest.mark.parametrize("case", LISTING_FAILURES, ids=[c.name for c in LISTING_FAILURES])
async def test_a_look_up_by_reference_reports_the_refund_that_moved_money_not_the_newest(
    case, gateway, router
):
    newer_failed, older_succeeded = case.mock_lookup_several(
        router, [PseRefundState.FAILED, PseRefundState.SUCCEEDED]
    )
    found = await gateway.find_refund(case.submission())
    assert isinstance(found, Accepted)
    assert found.refund.pse_refund_id == older_succeeded != newer_failed
    assert found.refund.state is PseRefundState.SUCCEEDED
    assert found.other_money_moving == ()


@pytest.mark.parametrize(
    "states",
    [
        pytest.param([PseRefundState.PENDING, PseRefundState.SUCCEEDED], id="pending+succeeded"),
        pytest.param([PseRefundState.SUCCEEDED, PseRefundState.SUCCEEDED], id="succeeded-twice"),
    ],
)
async def test_two_refunds_that_moved_money_under_one_reference_are_reported_as_doubled(
    case, gateway, router, states
):
    ids = case.mock_lookup_several(router, states)
    found = await gateway.find_refund(case.submission())
    assert isinstance(found, Accepted)
    assert found.refund.state is PseRefundState.SUCCEEDED
    others = [r.pse_refund_id for r in found.other_money_moving]
    assert sorted([found.refund.pse_refund_id, *others]) == sorted(ids)
    assert len(others) == 1


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


@pytest.mark.parametrize(
    "configured",
    [pytest.param(("",), id="only-empty"), pytest.param(("", None), id="empty-beside-real")],
)
async def test_a_webhook_signed_with_an_empty_key_is_refused_even_if_one_is_configured(
    case, configured
):
    secrets = tuple(case.secrets[0] if s is None else s for s in configured)
    account = dataclasses.replace(case.account(), webhook_secrets=secrets)
    hook = case.webhook(PseRefundState.SUCCEEDED, "")
    async with httpx.AsyncClient() as http:
        gateway = case.gateway(account, http)
        with pytest.raises(InvalidWebhookSignature):
            gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
        if case.secrets[0] in secrets:
            real = case.webhook(PseRefundState.SUCCEEDED, case.secrets[0])
            event = gateway.parse_webhook(
                {k.lower(): v for k, v in real.headers.items()}, real.body, now()
            )
            assert event.refund is not None


async def test_a_webhook_signed_with_the_previous_secret_is_accepted(case, gateway):
    hook = case.webhook(PseRefundState.SUCCEEDED, case.secrets[1])
    event = gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())
    assert event.refund is not None and event.refund.state is PseRefundState.SUCCEEDED


# --------------------------------------------------------------------------
# Disputes (chargebacks): every provider that documents dispute webhooks
# --------------------------------------------------------------------------

DISPUTE_CASES: list[DisputeCase] = [c for c in CASES if hasattr(c, "dispute_webhook")]
DISPUTE_IDS = [c.name for c in DISPUTE_CASES]
DISPUTE_STATUSES = [
    pytest.param(c, status, id=f"{c.name}-{status.value}")
    for c in DISPUTE_CASES
    for status in sorted(c.dispute_statuses)
]


def parse_signed(gateway: PseGateway, hook: SignedWebhook) -> PseWebhookEvent:
    return gateway.parse_webhook({k.lower(): v for k, v in hook.headers.items()}, hook.body, now())


def test_every_provider_that_documents_dispute_webhooks_has_a_dispute_case():
    # KOMOJU and PAY.JP (v2) document no dispute events: their disputes are
    # reported by a person or the store (`POST /v1/payments/{id}/disputes`).
    assert set(DISPUTE_IDS) == {"sandbox", "stripe", "razorpay", "omise", "xendit"}
    for case in DISPUTE_CASES:
        assert {DisputeStatus.OPEN, DisputeStatus.WON, DisputeStatus.LOST} <= case.dispute_statuses


@pytest.mark.parametrize(("case", "status"), DISPUTE_STATUSES)
async def test_a_signed_dispute_webhook_is_reported_in_our_words(
    case: DisputeCase, gateway: PseGateway, status: DisputeStatus
):
    event = parse_signed(gateway, case.dispute_webhook(status, case.secrets[0]))

    assert event.refund is None
    assert event.dispute == case.expected_dispute(status)


@pytest.mark.parametrize("case", DISPUTE_CASES, ids=DISPUTE_IDS)
async def test_a_dispute_webhook_names_the_payment_the_refunds_are_made_against(
    case: DisputeCase, gateway: PseGateway
):
    # What lets the service find the payment whose refunds the dispute holds.
    event = parse_signed(gateway, case.dispute_webhook(DisputeStatus.OPEN, case.secrets[0]))

    assert event.dispute is not None
    assert event.dispute.amount is not None
    assert event.dispute.amount.currency == case.submission().amount.currency
    assert event.dispute.pse_payment_ids


@pytest.mark.parametrize("case", DISPUTE_CASES, ids=DISPUTE_IDS)
async def test_a_dispute_webhook_signed_with_the_previous_secret_is_accepted(
    case: DisputeCase, gateway: PseGateway
):
    event = parse_signed(gateway, case.dispute_webhook(DisputeStatus.LOST, case.secrets[1]))

    assert event.dispute is not None and event.dispute.status is DisputeStatus.LOST


@pytest.mark.parametrize("case", DISPUTE_CASES, ids=DISPUTE_IDS)
async def test_a_forged_or_unsigned_dispute_webhook_is_refused(
    case: DisputeCase, gateway: PseGateway
):
    forged = case.dispute_webhook(DisputeStatus.WON, "whsec_" + "Zm9yZ2VkLXNlY3JldC0xMjM0NTY3OA==")
    with pytest.raises(InvalidWebhookSignature):
        parse_signed(gateway, forged)
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook({}, forged.body, now())
    if not case.signs_body:
        return
    real = case.dispute_webhook(DisputeStatus.WON, case.secrets[0])
    # The one change that matters most: a lost dispute passed off as won.
    tampered = real.body.replace(b'"won"', b'"lost"').replace(b'"WON"', b'"LOST"')
    assert tampered != real.body
    with pytest.raises(InvalidWebhookSignature):
        parse_signed(gateway, SignedWebhook(real.headers, tampered))


@pytest.mark.parametrize("field", DISPUTE_FIELDS)
@pytest.mark.parametrize("case", DISPUTE_CASES, ids=DISPUTE_IDS)
async def test_a_signed_dispute_webhook_missing_a_field_is_an_invalid_payload(
    case: DisputeCase, gateway: PseGateway, field: str
):
    hook = case.dispute_webhook(DisputeStatus.OPEN, case.secrets[0], without=field)

    with pytest.raises(InvalidWebhookPayload, match="readable dispute"):
        parse_signed(gateway, hook)
