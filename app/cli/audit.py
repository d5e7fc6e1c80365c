"""`audit verify | export | purge`: the hash-chained audit trail."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from app.cli.database import with_container
from app.cli.options import ConfigOption, command_group, fail
from app.domain.times import RANGE, in_utc

audit_cli = command_group("Verify, export and purge the audit trail.")


@audit_cli.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Walk the hash chain; exit 1 naming the first record edited, deleted or reordered."""
    verification = with_container(config, lambda c: c.audit.verify())
    if verification.ok:
        typer.echo(
            f"audit chain intact: {verification.checked} records "
            f"({verification.first_seq}..{verification.last_seq})"
        )
        return
    typer.echo(f"audit chain BROKEN at {verification.broken}", err=True)
    raise typer.Exit(1)


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{name}: {value!r} is not an RFC 3339 time")
    if parsed.tzinfo is None:
        fail(f"{name}: give a time zone (e.g. Z)")
    moment = in_utc(parsed)
    if moment is None:
        fail(f"{name}: {value!r} is not a time {RANGE}")
    return moment


@audit_cli.command("export")
def audit_export(
    from_: Annotated[str | None, typer.Option("--from", help="RFC 3339, inclusive")] = None,
    to: Annotated[str | None, typer.Option("--to", help="RFC 3339, exclusive")] = None,
    config: ConfigOption = None,
) -> None:
    """Print the records of a period as JSON Lines, oldest first (for a regulator or acquirer)."""
    start, end = _moment(from_, "--from"), _moment(to, "--to")

    async def export(container: Any) -> int:
        from app.services.views import audit_view

        count = 0
        async for record in container.audit.export(start, end):
            sys.stdout.write(json.dumps(audit_view(record), ensure_ascii=False) + "\n")
            count += 1
        return count

    count = with_container(config, export)
    typer.echo(f"{count} records", err=True)


@audit_cli.command("purge")
def audit_purge(config: ConfigOption = None) -> None:
    """Remove the records older than `audit_retention_days` (never below 548 days);
    the chain stays verifiable from the last removed record's hash."""

    async def purge(container: Any) -> tuple[int, int]:
        days = container.settings.audit_retention_days
        return await container.audit.purge(days), days

    removed, days = with_container(config, purge)
    typer.echo(f"removed {removed} records older than {days} days")
