"""The conformance contract every PSE adapter passes.

Each provider describes itself in `tests/adapters/cases/<provider>.py` with a
module-level `CASE` implementing `ProviderCase`: how to build its gateway,
and how to wire respx routes that answer exactly as the provider documents
(request and response shapes). `test_conformance.py` runs the same scenarios
against every case. A provider that sends dispute (chargeback) webhooks also
implements `DisputeCase`, and the dispute scenarios run against each of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import respx

from app.adapters.pse.base import PseAccount
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)

# Loopback only: respx answers every call; nothing leaves the machine.
BASE_URL = "http://127.0.0.1:9"
REFERENCE = "rf_0193c1d2e3f4a5b6c7d8e9f0a1b2"
IDEMPOTENCY_KEY = f"rfnd-{REFERENCE}"


@dataclass(frozen=True)
class SignedWebhook:
    headers: dict[str, str]
    body: bytes


class ProviderCase(Protocol):
    """One provider, as the conformance scenarios need it."""

    name: str
    # The webhook secrets configured on the account: (current, previous).
    secrets: tuple[str, str]
    # False for static-token schemes (the token proves the sender, not the
    # body): a body changed by a holder of the token cannot be detected.
    signs_body: bool
    # The states a refund listed by the provider's look-up can be in (KOMOJU and
    # Omise list no failed refunds: theirs have no failure status).
    listed_states: frozenset[PseRefundState]

    def account(self) -> PseAccount:
        """An account at BASE_URL with both secrets, instant retries
        (backoff_initial_seconds=0.001, backoff_max_seconds=0.002) and max_attempts=3."""

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway: ...

    def submission(self) -> RefundSubmission:
        """A typical refund for this provider (its usual currency and payment id),
        with reference=REFERENCE and idempotency_key=IDEMPOTENCY_KEY."""

    def expected_pse_refund_id(self) -> str:
        """The PSE's id of the refund the routes below create or find."""

    # -- respx wiring: each installs the routes for one situation -------------

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        """The create call answers with a refund in `state` (PENDING or SUCCEEDED as
        the provider can answer; a provider that only ever answers one state may
        answer that one). The route must assert the documented request shape."""

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        """The create call is refused as the provider documents it, for
        reason "amount_too_large" or "window_passed"."""

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        """Every create attempt times out (httpx.ReadTimeout)."""

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        """The look-up the adapter does (by PSE id or by listing the payment's
        refunds) finds our refund in `state`."""

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        """The look-up proves the PSE has no refund with our reference."""

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        """The look-up by our reference (no PSE id known) finds one refund under
        our reference for each of `states`, from the newest to the oldest, each
        with its own PSE id, listed in the order and shape the provider documents.
        Returns their PSE ids, newest first."""

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        """A refund event for our refund in `state`, signed with `secret` exactly as
        the provider signs (use the provider's official SDK to sign where one exists)."""


# The dispute fields `DisputeCase.dispute_webhook` can leave out of the dispute.
DISPUTE_FIELDS = ("id", "status", "amount")


class DisputeCase(ProviderCase, Protocol):
    """A provider that documents dispute webhooks (KOMOJU and PAY.JP v2 document none)."""

    # Ours for every dispute status the provider can send (Xendit has no `closed`).
    dispute_statuses: frozenset[DisputeStatus]

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        """What `dispute_webhook(status, …)` must be translated to, field by field:
        a dispute of `submission().pse_payment_id`, amounts in ISO minor units."""

    def dispute_webhook(
        self,
        status: DisputeStatus,
        secret: str,
        *,
        without: str | None = None,
        event_id: str = "evt_dispute_1",
    ) -> SignedWebhook:
        """A dispute event whose dispute is in a provider status that is `status` in
        our words, signed with `secret` exactly as the provider signs (with its
        official SDK where one exists). `without`: one of DISPUTE_FIELDS left out
        of the dispute object."""
