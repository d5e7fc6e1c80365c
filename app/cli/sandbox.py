"""`sandbox`: the sandbox PSE on its own."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.options import fail


def sandbox(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
    api_key: Annotated[str, typer.Option(help="the key clients must send")] = "sk_sandbox_demo",
    webhook_url: Annotated[str | None, typer.Option(help="where to POST signed webhooks")] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(help="whsec_… secret to sign webhooks (printed when generated)"),
    ] = None,
    settle_delay: Annotated[float, typer.Option(help="seconds from pending to final")] = 0.3,
    seed: Annotated[int | None, typer.Option(help="seed for fault decisions")] = None,
    faults: Annotated[
        str | None,
        typer.Option(help='faults as JSON, e.g. \'{"latency_ms": 200, "failure_rate": 0.1}\''),
    ] = None,
) -> None:
    """Run the sandbox PSE standalone (faults switchable at PUT /_control/faults)."""
    from app.sandbox.config import Faults, SandboxConfig, new_webhook_secret
    from app.sandbox.server import run_sandbox

    secret = webhook_secret or new_webhook_secret()
    if webhook_secret is None:
        typer.echo(f"webhook secret: {secret}")
    try:
        fault_set = Faults.from_json(json.loads(faults)) if faults else Faults()
    except (ValueError, TypeError) as exc:
        fail(f"--faults: {exc}")
    config = SandboxConfig(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=secret,
        settle_delay_seconds=settle_delay,
        seed=seed,
    )
    run_sandbox(host, port, config, fault_set)
