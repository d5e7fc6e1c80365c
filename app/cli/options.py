"""What the commands have in common: the `--config` option, command groups
rendered alike, and the one way a command gives up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer

# Markdown rather than rich markup: help texts quote TOML tables such as
# `[worker]`, which rich markup would take for its own tags and drop.
MARKUP_MODE: Final = "markdown"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        show_default=False,
        help="the TOML configuration file (else PSE_REFUNDS_CONFIG_FILE, else "
        "./pse-refunds.toml when present)",
    ),
]


def command_group(help: str) -> typer.Typer:
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=MARKUP_MODE,
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one line on stderr: 2 for what the configuration or
    the command line got wrong, 1 for the state of things (an unmigrated or
    unreachable database, a broken audit chain)."""
    typer.echo(f"pse-refunds: {message}", err=True)
    raise typer.Exit(code)
