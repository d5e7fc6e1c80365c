"""`pse-refunds`: serve, migrate, manage keys, reconcile, audit, run the sandbox PSE.

A module per command group; this one assembles them into the command line.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Annotated

import typer

from app.cli.audit import audit_cli
from app.cli.keys import keys_cli
from app.cli.migrate import migrate
from app.cli.options import MARKUP_MODE
from app.cli.reconcile import reconcile
from app.cli.sandbox import sandbox
from app.cli.serve import serve, worker

DISTRIBUTION = "pse-refunds"

cli = typer.Typer(
    name="pse-refunds",
    help="Refund lifecycle service between online stores and their PSEs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP_MODE,
)
cli.command()(migrate)
cli.command()(serve)
cli.command()(worker)
cli.command()(sandbox)
cli.command()(reconcile)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(audit_cli, name="audit")


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown (not installed)"


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"pse-refunds {version()}")
        raise typer.Exit()


@cli.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Refund lifecycle service between online stores and their PSEs."""


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
