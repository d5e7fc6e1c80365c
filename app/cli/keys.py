"""`keys create | list | revoke`: API keys, whose secrets are shown once."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.database import with_container
from app.cli.options import ConfigOption, command_group, fail
from app.domain.errors import DomainError
from app.domain.records import ApiKey

keys_cli = command_group("Create, list and revoke API keys.")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    role: Annotated[list[str], typer.Option(help="store, approver, ops or admin (repeatable)")],
    approval_level: Annotated[
        int | None, typer.Option(help="1, 2 or 3; required for approvers")
    ] = None,
    account: Annotated[
        list[str] | None,
        typer.Option(
            help="a configured PSE account the key is limited to (repeatable); "
            "without it, the key sees every account"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a key. The secret is printed once and stored only as a hash.

    With --account, the key sees and acts only on the payments, refunds,
    events and audit records of those PSE accounts (any other is "not found")."""
    accounts = account or None
    try:
        key, secret = with_container(
            config, lambda c: c.keys.create(name, role, approval_level, accounts)
        )
    except DomainError as exc:
        fail(exc.detail)
    roles = sorted(r.value for r in key.roles)
    scope = sorted(key.accounts) if key.accounts is not None else None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "id": key.id,
                    "name": key.name,
                    "key": secret,
                    "roles": roles,
                    "approval_level": key.approval_level,
                    "accounts": scope,
                }
            )
        )
        return
    typer.echo(f"id:    {key.id}\nname:  {key.name}\nroles: {', '.join(roles)}")
    if key.approval_level:
        typer.echo(f"level: {key.approval_level}")
    typer.echo(f"accounts: {', '.join(scope) if scope is not None else 'all'}")
    typer.echo(f"key:   {secret}\n(shown once: store it now)")


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (key_…)")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once."""
    try:
        with_container(config, lambda c: c.keys.revoke(key_id))
    except DomainError as exc:
        fail(exc.detail, 1)
    typer.echo(f"revoked {key_id}")


@keys_cli.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys (never their secrets): id, prefix, roles, approval level,
    state, the PSE accounts it is limited to ("all": unscoped) and name."""
    keys = with_container(config, lambda c: c.keys.list())
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.prefix,
            "roles": sorted(r.value for r in k.roles),
            "approval_level": k.approval_level,
            "accounts": sorted(k.accounts) if k.accounts is not None else None,
            "revoked": k.revoked_at is not None,
        }
        for k in keys
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo("\n".join(key_table(keys)))


KEY_COLUMNS = ("ID", "PREFIX", "ROLES", "LEVEL", "STATE", "ACCOUNTS", "NAME")


def key_table(keys: list[ApiKey]) -> list[str]:
    """The keys under a header, in columns; the name last, as it may be long.
    LEVEL is the level the key approves at (an admin's is 3 unless set);
    ACCOUNTS the PSE accounts it is limited to, "all" for an unscoped key."""
    cells = [KEY_COLUMNS] + [
        (
            key.id,
            f"{key.prefix}…",
            ",".join(sorted(r.value for r in key.roles)),
            str(key.effective_approval_level or "-"),
            "active" if key.active else "revoked",
            ",".join(sorted(key.accounts)) if key.accounts is not None else "all",
            key.name,
        )
        for key in keys
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(KEY_COLUMNS) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + f"  {line[-1]}"
        for line in cells
    ]
