"""Settings of the sandbox PSE and the faults it can be told to inject."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from standardwebhooks import Webhook


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret (`whsec_` + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    api_key: str
    webhook_url: str | None
    webhook_secret: str
    # Time from "pending" to the final outcome of a refund.
    settle_delay_seconds: float = 0.3
    refund_window_days: int = 180
    # Seeds the one random generator behind every fault decision, so a chaos run
    # with the same seed and the same request order injects the same faults.
    seed: int | None = None
    # Webhook delivery: a few attempts with doubling backoff. A receiver that stays
    # down longer misses the event, as it would with a PSE that gives up.
    webhook_timeout_seconds: float = 2.0
    webhook_max_attempts: int = 4
    webhook_backoff_seconds: float = 0.1

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        try:
            Webhook(self.webhook_secret)
        except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, TypeError…
            raise ValueError(
                "webhook_secret must be a Standard Webhooks secret: whsec_<base64>"
            ) from exc
        if self.settle_delay_seconds < 0:
            raise ValueError("settle_delay_seconds must not be negative")
        if self.refund_window_days < 0:
            raise ValueError("refund_window_days must not be negative")
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be at least 1")
        if self.webhook_timeout_seconds <= 0 or self.webhook_backoff_seconds < 0:
            raise ValueError("webhook timeout must be positive and backoff not negative")


_RATES = (
    "timeout_after_commit_rate",
    "error_after_commit_rate",
    "error_before_commit_rate",
    "webhook_drop_rate",
    "webhook_duplicate_rate",
    "failure_rate",
)
_DURATIONS = ("latency_ms", "hang_seconds", "webhook_delay_seconds")


@dataclass(frozen=True, slots=True)
class Faults:
    """What the sandbox does wrong on purpose. Everything is off by default.

    Rates are probabilities in [0, 1], decided per request / refund / event.
    Frozen: a request reads one consistent set, and `PUT /_control/faults`
    swaps the whole set at once.
    """

    latency_ms: float = 0
    # Commit the refund, then keep the answer back for `hang_seconds`: the client
    # times out while the refund exists.
    timeout_after_commit_rate: float = 0.0
    hang_seconds: float = 30.0
    error_after_commit_rate: float = 0.0
    error_before_commit_rate: float = 0.0
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_seconds: float = 0.0
    # Send the events of a refund out of order: the final one before `refund.created`.
    webhook_reorder: bool = False
    # Share of refunds that end `failed` with failure_code `sandbox_declined`.
    failure_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        for name in _DURATIONS:
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if not isinstance(self.webhook_reorder, bool):
            raise ValueError(f"webhook_reorder must be true or false, got {self.webhook_reorder!r}")

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Build from a JSON object; missing fields take their default (off).

        Unknown fields are refused: a misspelt fault silently ignored would make a
        chaos run pass for the wrong reason.
        """
        if not isinstance(data, Mapping):
            raise ValueError("faults must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown faults: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
