"""Configuration: environment variables (`PSE_REFUNDS_`, nested with `__`) over a TOML file.

The file is named by `PSE_REFUNDS_CONFIG_FILE` (default `./pse-refunds.toml`
when it exists). Secrets may be written `env:NAME` to read another variable.
Unknown keys and bad values stop the start with a message naming the key; a
file that is missing or not TOML, with a message naming the file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.domain.money import is_currency, rate_text

ENV_PREFIX = "PSE_REFUNDS_"
CONFIG_FILE_VAR = "PSE_REFUNDS_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "pse-refunds.toml"
EMBEDDED_DATA_DIR_VAR = "PSE_REFUNDS_EMBEDDED_DATA_DIR"
DEFAULT_EMBEDDED_DATA_DIR = ".pse-refunds"
DATABASE_URL_SCHEMES = ("postgresql+asyncpg://", "postgresql://")
MIN_AUDIT_RETENTION_DAYS = 548
# Standard Webhooks secrets are base64 of 24 to 64 random bytes; fewer is refused.
MIN_STORE_WEBHOOK_SECRET_BYTES = 24
# A bearer token guessed online only, yet never shorter than our HMAC keys.
MIN_METRICS_TOKEN_LENGTH = 16

Provider = Literal["sandbox", "stripe", "komoju", "payjp", "xendit", "razorpay", "omise"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "stripe": "https://api.stripe.com",
    "komoju": "https://komoju.com",
    "payjp": "https://api.pay.jp",
    "xendit": "https://api.xendit.co",
    "razorpay": "https://api.razorpay.com",
    "omise": "https://api.omise.co",
}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def _resolve_env_reference(value: Any) -> Any:
    """`env:NAME` → the value of environment variable NAME."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str) and raw.startswith("env:"):
        name = raw[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(os.environ[name])
    return value


Secret = Annotated[SecretStr, AfterValidator(_resolve_env_reference)]


def _currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


Currency = Annotated[str, AfterValidator(_currency)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class WebhookSecretFormat:
    """What a provider's webhook secret looks like, so a short or malformed one
    is refused at start rather than accepting forgeries later."""

    min_length: int
    prefix: str = ""
    # Standard Webhooks and Omise secrets are base64 of random bytes: count those.
    base64_min_bytes: int | None = None
    describe: str = ""


# Issued secrets follow the provider's own format; where the merchant chooses
# the secret (KOMOJU, Razorpay) there is no documented minimum, so 16
# characters is ours: an HMAC key shorter than that can be guessed offline.
WEBHOOK_SECRET_FORMATS: dict[str, WebhookSecretFormat] = {
    "sandbox": WebhookSecretFormat(
        30, "whsec_", base64_min_bytes=24, describe="whsec_ + base64 of at least 24 bytes"
    ),
    "stripe": WebhookSecretFormat(
        38, "whsec_", describe="the endpoint's signing secret, whsec_ + at least 32 characters"
    ),
    "komoju": WebhookSecretFormat(16, describe="the webhook secret, at least 16 characters"),
    "razorpay": WebhookSecretFormat(16, describe="the webhook secret, at least 16 characters"),
    "payjp": WebhookSecretFormat(
        24, describe="the webhook token shown in the dashboard, at least 24 characters"
    ),
    "xendit": WebhookSecretFormat(
        32, describe="the callback verification token, at least 32 characters"
    ),
    "omise": WebhookSecretFormat(
        24, base64_min_bytes=16, describe="the base64 webhook secret of at least 16 bytes"
    ),
}


def _check_webhook_secret(provider: str, secret: str) -> str | None:
    """Why `secret` cannot be this provider's webhook secret, or None."""
    rule = WEBHOOK_SECRET_FORMATS[provider]
    if not secret:
        return "is empty"
    if secret != secret.strip():
        # Spaces would count towards the length, and a newline from a secret
        # file would make every signature fail.
        return "has leading or trailing whitespace"
    if rule.prefix and not secret.startswith(rule.prefix):
        return f"must start with {rule.prefix} ({rule.describe})"
    if len(secret) < rule.min_length:
        return f"is too short ({rule.describe})"
    if rule.base64_min_bytes is not None:
        try:
            decoded = base64.b64decode(secret[len(rule.prefix) :], validate=True)
        except (binascii.Error, ValueError):
            return f"is not base64 ({rule.describe})"
        if len(decoded) < rule.base64_min_bytes:
            return f"is too short ({rule.describe})"
    return None


LOOPBACK_NAMES = ("localhost",)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic that never leaves the machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url_problem(
    url: str, *, allow_insecure: bool, insecure_key: str, carries: str
) -> str | None:
    """Why `url` cannot be used, or None. Never the URL itself in the answer:
    it may hold credentials, and errors end up in logs."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "must name a host"
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        return (
            f"is http://, which would send {carries} in clear text: use https://, or a "
            f"loopback host (127.0.0.0/8, ::1, localhost); {insecure_key} = true allows it, "
            "for tests only"
        )
    return None


class AccountSettings(_Strict):
    provider: Provider
    api_key: Secret = SecretStr("")
    webhook_secrets: list[Secret] = Field(default_factory=list)
    # For tests only: an http:// base_url on a host other than loopback. Declared
    # before base_url, whose check reads it.
    allow_insecure_base_url: bool = False
    base_url: str | None = None
    refund_window_days: int | None = Field(default=None, ge=1, le=3650)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_initial_seconds: float = Field(default=0.5, ge=0, le=60)
    backoff_max_seconds: float = Field(default=8.0, ge=0, le=600)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secret_format(cls, value: list[SecretStr], info: ValidationInfo) -> Any:
        provider = info.data.get("provider")
        if provider is None:
            return value  # the provider itself was refused; that error names it
        for index, secret in enumerate(value):
            problem = _check_webhook_secret(provider, secret.get_secret_value())
            if problem is not None:
                # The position, never the secret: errors end up in logs.
                raise ValueError(f"secret #{index + 1} {problem}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if "provider" not in info.data or "allow_insecure_base_url" not in info.data:
            return value  # refused itself; that error names it
        # The sandbox PSE moves no money: the demo serves it over http:// wherever it listens.
        insecure = info.data["allow_insecure_base_url"] or info.data["provider"] == "sandbox"
        problem = _http_url_problem(
            value,
            allow_insecure=insecure,
            insecure_key="allow_insecure_base_url",
            carries="the API key and every refund",
        )
        if problem is not None:
            raise ValueError(f"base_url {problem}")
        return value.rstrip("/")

    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS.get(self.provider, "")


class ApprovalTierSettings(_Strict):
    currency: Currency
    above: int = Field(ge=0)
    approvals: int = Field(default=1, ge=1, le=10)
    min_level: int = Field(default=1, ge=1, le=3)


def _rate_pair(pair: str) -> str:
    parts = pair.split("_")
    if len(parts) != 2 or not all(is_currency(code) for code in parts) or parts[0] == parts[1]:
        raise ValueError(f"{pair!r}: name a rate FROM_TO with two ISO 4217 codes, e.g. EUR_JPY")
    return pair


class RateSettings(_Strict):
    # A string, as every rate is: TOML floats carry binary noise.
    rate: Annotated[str, AfterValidator(rate_text)]
    as_of: date


class PolicySettings(_Strict):
    refund_window_days: int = Field(default=180, ge=1, le=3650)
    max_refund_amount: dict[Currency, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    daily_auto_approve_limit: dict[Currency, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict
    )
    approval_tiers: list[ApprovalTierSettings] = Field(default_factory=list)
    # Rates the operator trusts for comparing refunds with tiers of another
    # currency, e.g. EUR_JPY = {rate = "162.35", as_of = 2026-11-30}.
    rates: dict[Annotated[str, AfterValidator(_rate_pair)], RateSettings] = Field(
        default_factory=dict
    )
    rate_max_age_days: int | None = Field(default=None, ge=1, le=3650)
    offline_payment_methods: list[str] = Field(
        default_factory=lambda: ["konbini", "pay_easy", "bank_transfer", "cash", "cash_on_delivery"]
    )
    # What a dispute opening on a payment does to its refunds not yet sent to
    # the PSE: held (back to pending_approval until it closes) or canceled.
    on_dispute: Literal["hold", "cancel"] = "hold"


class WorkerSettings(_Strict):
    enabled: bool = True
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    resolve_backoff_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [300, 3600, 86400, 86400, 86400], min_length=1
    )
    submitting_grace_seconds: float = Field(default=60, ge=0)
    pending_check_after_seconds: float = Field(default=3600, ge=0)
    approved_grace_seconds: float = Field(default=10, ge=0)
    batch_size: int = Field(default=20, ge=1, le=1000)
    concurrency: int = Field(default=8, ge=1, le=256)
    lease_seconds: float = Field(default=300, gt=0)


class ServerSettings(_Strict):
    # API processes `serve` runs on its port (`--workers` overrides); more than
    # one needs PostgreSQL. Each has its own connection pool and background worker.
    workers: int = Field(default=1, ge=1, le=256)
    # A request's line and headers must arrive within this, or the connection
    # is closed (408): a client trickling headers holds no connection for long.
    header_timeout_seconds: float = Field(default=10, gt=0, le=300)
    # A request body must arrive within this (settlement uploads: each chunk
    # within it, however long the whole file takes), else 408 `request_timeout`.
    body_timeout_seconds: float = Field(default=30, gt=0, le=3600)
    # An idle kept-alive connection is closed after this.
    keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    # Connections (and requests) one process serves at once; beyond, uvicorn
    # answers 503 at once rather than queueing without bound.
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # Connections waiting to be accepted by the kernel.
    backlog: int = Field(default=2048, ge=1, le=65_535)


def _rate_limit(value: str) -> str:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit: write e.g. '200/second' or '20/minute;500/hour'"
        ) from None
    return value


RateLimit = Annotated[str, AfterValidator(_rate_limit)]


class RateLimitSettings(_Strict):
    """Limits counted in memory by each process (see README, "Security")."""

    enabled: bool = True
    # Requests of one API key.
    per_key: RateLimit = "200/second"
    # Requests from one client address, whatever their key (none included).
    per_address: RateLimit = "1000/second"
    # Requests with a missing, unknown or revoked key from one address; once
    # spent, that address is refused at once, its keys not even looked at.
    failed_auth_per_address: RateLimit = "20/minute"
    # Console sign-in attempts from one address.
    console_login_per_address: RateLimit = "10/minute"
    # Webhooks to one PSE account: generous, and a 429 makes the PSE retry.
    webhooks_per_account: RateLimit = "500/second"


class StoreWebhookSettings(_Strict):
    # For tests only: an http:// url on a host other than loopback. Declared
    # before url, whose check reads it.
    allow_insecure_url: bool = False
    url: str
    # Signs every event; during a rotation list the old one in secrets_previous
    # and both sign, so the store may switch at its own pace.
    secret: Secret
    secrets_previous: list[Secret] = Field(default_factory=list)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    retry_for_hours: float = Field(default=24, gt=0)
    backoff_initial_seconds: float = Field(default=5, gt=0)
    backoff_max_seconds: float = Field(default=3600, gt=0)

    @field_validator("secret", "secrets_previous")
    @classmethod
    def _standard_webhooks_secret(cls, value: Any) -> Any:
        listed = isinstance(value, list)
        for index, item in enumerate(value if listed else [value]):
            # The position, never the secret: errors end up in logs.
            which = f"secret #{index + 1}" if listed else "the secret"
            raw = item.get_secret_value()
            if not raw.startswith("whsec_"):
                raise ValueError(
                    f"{which}: store webhook secrets are Standard Webhooks secrets: whsec_…"
                )
            try:
                key = base64.b64decode(raw[6:], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{which}: the part after whsec_ must be base64") from None
            if len(key) < MIN_STORE_WEBHOOK_SECRET_BYTES:
                raise ValueError(
                    f"{which} is too short: whsec_ + base64 of at least "
                    f"{MIN_STORE_WEBHOOK_SECRET_BYTES} random bytes (Standard Webhooks)"
                )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if "allow_insecure_url" not in info.data:
            return value  # refused itself; that error names it
        problem = _http_url_problem(
            value,
            allow_insecure=info.data["allow_insecure_url"],
            insecure_key="allow_insecure_url",
            carries="every signed event",
        )
        if problem is not None:
            raise ValueError(f"url {problem}")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # Unset: the embedded PostgreSQL in `embedded_data_dir`, started by the
    # commands that need it (relative to the folder they run in).
    database_url: str | None = None
    embedded_data_dir: Path = Path(DEFAULT_EMBEDDED_DATA_DIR)
    stale_after_hours: float = Field(default=24, gt=0)
    audit_enabled: bool = True
    audit_retention_days: int = Field(default=1827, ge=MIN_AUDIT_RETENTION_DAYS)
    log_format: Literal["console", "json"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)  # settlement files
    # A request holding an Idempotency-Key this long without finishing is taken
    # to have died with its process: a retry with the key may run again.
    idempotency_in_flight_seconds: float = Field(default=60, gt=0)
    # Answers kept for replay; the contract promises at least 30 days.
    idempotency_retention_days: int = Field(default=30, ge=30)
    # A console session ends after this long without a request, and this long
    # after sign-in whatever the activity.
    console_idle_minutes: float = Field(default=30, gt=0, le=24 * 60)
    console_absolute_hours: float = Field(default=12, gt=0, le=7 * 24)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    accounts: dict[str, AccountSettings] = Field(default_factory=dict)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    store_webhook: StoreWebhookSettings | None = None
    # GET /metrics (see app/api/metrics_access.py). Neither set, the default:
    # not served at all. metrics_token: a bearer token every scrape must carry.
    # metrics_port: `serve` answers /metrics there only, on the interface of
    # --host, and never on the public port.
    metrics_token: Secret | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Set by `serve` when it starts the embedded demo; never read from outside.
    demo: bool = Field(default=False, exclude=True)

    @field_validator("database_url")
    @classmethod
    def _postgresql(cls, value: str | None) -> str | None:
        if not value:  # an empty variable (`-e PSE_REFUNDS_DATABASE_URL=`) means unset
            return None
        if not value.startswith(DATABASE_URL_SCHEMES):
            # Never the URL itself: it may hold a password.
            raise ValueError(
                "must be a PostgreSQL URL, postgresql+asyncpg://… or postgresql://… "
                f"(leave it unset for the embedded PostgreSQL in ./{DEFAULT_EMBEDDED_DATA_DIR}/)"
            )
        # One spelling whatever was written: the driver is asyncpg either way.
        return value.replace("postgresql://", "postgresql+asyncpg://", 1)

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        raw = value.get_secret_value() if value is not None else ""
        if not raw:  # an empty variable means unset, as for database_url
            return None
        # The length and the rule, never the token: errors end up in logs.
        if len(raw) < MIN_METRICS_TOKEN_LENGTH:
            raise ValueError(
                f"is too short: at least {MIN_METRICS_TOKEN_LENGTH} random characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        if not all("!" <= c <= "~" for c in raw):
            raise ValueError("must be printable ASCII without spaces: it is sent in an HTTP header")
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("accounts")
    @classmethod
    def _account_names(cls, value: dict[str, AccountSettings]) -> dict[str, AccountSettings]:
        for name in value:
            if not name or not all(c.isalnum() or c in "_-" for c in name) or len(name) > 64:
                raise ValueError(f"account name {name!r}: use letters, digits, _ and -")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None


def config_file_path() -> Path | None:
    named = os.environ.get(CONFIG_FILE_VAR)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(
                f"invalid configuration: {named}: no such file (named by {CONFIG_FILE_VAR})"
            )
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def has_any_configuration() -> bool:
    """False when neither a config file nor any PSE_REFUNDS_ variable is present.

    Where the embedded PostgreSQL keeps its data is no configuration of the
    service: the demo may be told to keep it elsewhere."""
    if config_file_path() is not None:
        return True
    return any(name.startswith(ENV_PREFIX) and name != EMBEDDED_DATA_DIR_VAR for name in os.environ)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate; a problem raises ConfigError naming the key, or the
    file when the file itself cannot be read."""
    path = config_file_path()
    if path is not None:
        _check_readable(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(root)"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{key}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _check_readable(path: Path) -> None:
    """Refuse a file that cannot be read or is not TOML, naming it: pydantic-settings
    would raise its parser's error with neither the file nor a tidy message."""
    try:
        with path.open("rb") as stream:
            tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid configuration: {path}: not TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"invalid configuration: {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"invalid configuration: {path}: {exc.strerror or exc}") from None


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the configuration holds, for redaction."""
    found: list[str] = []
    for account in settings.accounts.values():
        found.append(account.api_key.get_secret_value())
        found.extend(s.get_secret_value() for s in account.webhook_secrets)
    if settings.store_webhook is not None:
        found.append(settings.store_webhook.secret.get_secret_value())
        found.extend(s.get_secret_value() for s in settings.store_webhook.secrets_previous)
    if settings.metrics_token is not None:
        found.append(settings.metrics_token.get_secret_value())
    # A database password, when the URL carries one.
    url = settings.database_url or ""
    if "://" in url and "@" in url.split("://", 1)[1]:
        credentials = url.split("://", 1)[1].rsplit("@", 1)[0]
        if ":" in credentials:
            found.append(credentials.split(":", 1)[1])
    return [s for s in found if s]
