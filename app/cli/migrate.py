"""`migrate`: the schema to head."""

from __future__ import annotations

import typer

from app.cli.database import database
from app.cli.options import ConfigOption
from app.cli.settings import command_settings, config_file


def migrate(config: ConfigOption = None) -> None:
    """Upgrade the database schema to the latest revision.

    Without a `database_url`, that of the embedded PostgreSQL (started for the
    purpose unless it runs already)."""
    from app.adapters.db.engine import migrate as run_migrations

    with config_file(config):
        settings = command_settings()
        with database(settings) as ready:
            # The embedded database is migrated on the way in.
            if ready.database_url is not None and not settings.uses_embedded_database:
                run_migrations(ready.database_url)
    typer.echo("schema at head")
