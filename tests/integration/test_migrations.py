"""Migrations that move data: run on a database holding what the revision
before them wrote."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command
from alembic.script import ScriptDirectory

from app.adapters.db.engine import SCHEMA_REVISION, alembic_config, asyncpg_dsn, migrate
from tests.conftest import scratch_database

_RUN = (
    "INSERT INTO reconciliations (id, pse_account, status, counts, created_at) "
    "VALUES ($1, 'fake_jp', $2, '{}', now())"
)
_LINE = (
    "INSERT INTO reconciliation_rows (reconciliation_id, line, outcome) VALUES ($1, $2, 'matched')"
)


async def test_reconciliation_runs_of_before_get_the_range_of_their_lines(pg_admin_dsn):
    async with scratch_database(pg_admin_dsn, migrated=False) as url:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "0009")
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            for run_id, status in (
                ("rec_1", "completed"),
                ("rec_2", "failed"),
                ("rec_3", "completed"),
                ("rec_4", "processing"),
            ):
                await conn.execute(_RUN, run_id, status)
            for run_id, line in (("rec_1", 2), ("rec_3", 2), ("rec_1", 3), ("rec_3", 3)):
                await conn.execute(_LINE, run_id, line)
            await asyncio.to_thread(migrate, url)
            ranges = {
                r["id"]: (r["first_line_id"], r["last_line_id"])
                for r in await conn.fetch(
                    "SELECT id, first_line_id, last_line_id FROM reconciliations"
                )
            }
            indexes = {
                r["indexname"]
                for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'reconciliation_rows'"
                )
            }
            options = await conn.fetchval(
                "SELECT reloptions FROM pg_class WHERE relname = 'refunds'"
            )
            await conn.execute(_RUN, "rec_5", "processing")
            after = await conn.fetchval(
                "SELECT first_line_id FROM reconciliations WHERE id = 'rec_5'"
            )
        finally:
            await conn.close()
    # Ids 1-4 went to rec_1, rec_3, rec_1, rec_3; a run without lines has an empty range.
    assert ranges == {"rec_1": (1, 3), "rec_2": (0, 0), "rec_3": (2, 4), "rec_4": (0, None)}
    assert indexes == {"pk_reconciliation_rows", "ix_reconciliation_rows_mismatch"}
    # Refunds' pages keep room for updates that touch no index.
    assert options == ["fillfactor=90"]
    # A new run's lines come after the sequence's next value.
    assert after == 5


def test_the_code_names_the_newest_migration_as_its_schema():
    """Readiness and the CLI compare the database with SCHEMA_REVISION, not
    with the scripts: a new migration must be named there too."""
    assert SCHEMA_REVISION == ScriptDirectory.from_config(alembic_config()).get_current_head()
