"""The embedded demo: the embedded PostgreSQL, a `sandbox` PSE account served
by the same process, example approval tiers, one printed key per role, and a
printed metrics token (new on every start: /metrics is never open, not even
in the demo)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from pydantic import SecretStr

from app.config import Settings, load_settings
from app.sandbox.config import SandboxConfig, new_webhook_secret

DEMO_HOST = "127.0.0.1"
DEMO_PORT = 8000
DEMO_SANDBOX_KEY = "sk_sandbox_demo"
DEMO_KEY_PREFIX = "demo-"
DEMO_ROLES: list[tuple[str, list[str], int | None]] = [
    ("store", ["store"], None),
    ("approver-1", ["approver"], 1),
    ("approver-2", ["approver"], 2),
    ("ops", ["ops"], None),
    ("admin", ["admin"], 3),
]
DemoKey = tuple[str, str, list[str], int | None]


def loopback(host: str) -> str:
    """The address a client on this machine reaches `host` at."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def base_url(host: str, port: int) -> str:
    host = loopback(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def demo_settings(host: str = DEMO_HOST, port: int = DEMO_PORT) -> tuple[Settings, SandboxConfig]:
    """The demo's settings and its sandbox PSE. The other commands use them with
    the default address: they read the same database and accounts, and never
    receive the sandbox's webhooks, whose secret is new on every start."""
    secret = new_webhook_secret()
    base = base_url(host, port)
    settings = load_settings(
        demo=True,
        log_format="console",
        metrics_token=secrets.token_urlsafe(24),
        accounts={
            "sandbox": {
                "provider": "sandbox",
                "api_key": DEMO_SANDBOX_KEY,
                "webhook_secrets": [secret],
                "base_url": f"{base}/sandbox",
                "timeout_seconds": 5,
                "max_attempts": 3,
            }
        },
        policy={
            "approval_tiers": [
                {"currency": "JPY", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "JPY", "above": 100000, "approvals": 2, "min_level": 2},
                {"currency": "USD", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "USD", "above": 100000, "approvals": 2, "min_level": 2},
            ]
        },
    )
    sandbox = SandboxConfig(
        api_key=DEMO_SANDBOX_KEY,
        webhook_url=f"{base}/v1/webhooks/sandbox",
        webhook_secret=secret,
    )
    return settings, sandbox


async def demo_keys(settings: Settings) -> list[DemoKey]:
    """Revoke the previous run's demo keys and make fresh ones (secrets are never stored)."""
    from app.bootstrap import build_container

    container = build_container(settings)
    try:
        for key in await container.keys.list():
            if key.name.startswith(DEMO_KEY_PREFIX) and key.active:
                await container.keys.revoke(key.id)
        created = []
        for name, roles, level in DEMO_ROLES:
            _key, secret = await container.keys.create(DEMO_KEY_PREFIX + name, roles, level)
            created.append((name, secret, roles, level))
        return created
    finally:
        await container.aclose()


def shown_path(path: Path) -> str:
    """`./.pse-refunds/` for a folder under the current one, else the full path."""
    resolved = path.expanduser().resolve()
    try:
        return f"./{resolved.relative_to(Path.cwd()).as_posix()}/"
    except ValueError:
        return f"{resolved}/"


def print_demo_banner(
    host: str,
    port: int,
    data_dir: Path,
    keys: list[DemoKey],
    metrics_token: SecretStr | None = None,
) -> None:
    url = base_url(host, port)
    # A capture a minute old: the example must stay inside the refund window
    # and never be in the future, whenever the demo runs.
    captured_at = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        "",
        "PSE Refund Service: embedded demo (sandbox PSE at /sandbox)",
        f"  Listening: {url}",
        f"  API docs:  {url}/docs",
        f"  Console:   {url}/console (sign in with an approver, ops or admin key below)",
    ]
    if metrics_token is not None:
        lines.append(
            f"  Metrics:   curl -s {url}/metrics "
            f"-H 'Authorization: Bearer {metrics_token.get_secret_value()}'"
        )
    lines += [
        f"  Data:      embedded PostgreSQL in {shown_path(data_dir)} "
        "(stops with the service; delete the folder to start afresh)",
        "  Demo API keys (new on every start; earlier demo keys are revoked):",
    ]
    for name, secret, _roles, level in keys:
        label = f"{name} (level {level})" if level and name.startswith("approver") else name
        lines.append(f"    {label:<20} {secret}")
    store = keys[0][1]
    lines += [
        "",
        "  Try it:",
        f"    curl -s -X POST {url}/v1/payments -H 'Authorization: Bearer {store}' \\",
        '      -H \'Content-Type: application/json\' -d \'{"pse_account":"sandbox",'
        '"pse_payment_id":"pay_demo_1","amount":50000,"currency":"JPY",'
        f'"captured_at":"{captured_at}"}}\'',
        "",
    ]
    typer.echo("\n".join(lines))
