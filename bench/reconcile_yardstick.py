"""The reconciliation yardstick: the same file's work in the least code.

Reads a generic settlement file with Python's `csv` module, copies each
batch of 10,000 refund lines into a temporary table, and judges and stores
the batch in one `INSERT ... SELECT` against its own copy of the refunds
(`yardstick_refunds`: the columns it needs, one index on the PSE's id).
Then it adds the refunds the file does not have and applies the file's fees.
Everything a run of `pse-refunds reconcile` keeps, stored the plainest way:
no parser rules beyond integers and the outcome, no domain objects, no run
record, no API. It prints its counts by outcome as one JSON object.

    .venv/bin/python bench/reconcile_yardstick.py --dsn postgresql://... --account bench FILE

`bench/reconcile.py` runs it after the service, on the same database, and
prints service / yardstick. `DDL` and `SEED` make its tables.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from datetime import datetime
from pathlib import Path

import asyncpg

BATCH = 10_000
# Every outcome it can find: the refund outcomes of the service's runs.
OUTCOMES = (
    "matched",
    "amount_mismatch",
    "status_mismatch",
    "missing_in_service",
    "missing_in_file",
)

DDL = """
CREATE TABLE yardstick_refunds (
    id text PRIMARY KEY, pse_account text NOT NULL, pse_refund_id text,
    amount bigint NOT NULL, currency text NOT NULL, status text NOT NULL, fee_amount bigint
);
CREATE TABLE yardstick_lines (
    id bigserial PRIMARY KEY, line integer NOT NULL, outcome text NOT NULL,
    pse_refund_id text, refund_id text, file_amount bigint, file_status text,
    currency text, settled_at timestamptz, fee bigint
);
"""
# The copy of the service's refunds, made once the bench has seeded them.
SEED = """
INSERT INTO yardstick_refunds
SELECT id, pse_account, pse_refund_id, amount, currency, status, fee_amount FROM refunds;
CREATE INDEX ix_yardstick_refunds_pse ON yardstick_refunds (pse_account, pse_refund_id);
ANALYZE yardstick_refunds;
"""

_BATCH_TABLE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS batch (line integer, pse_refund_id text, "
    "amount bigint, currency text, status text, settled_at timestamptz, fee bigint) "
    "ON COMMIT DELETE ROWS"
)
_JUDGE = """
INSERT INTO yardstick_lines
    (line, outcome, pse_refund_id, refund_id, file_amount, file_status, currency, settled_at, fee)
SELECT b.line,
       CASE WHEN r.id IS NULL THEN 'missing_in_service'
            WHEN r.amount <> b.amount OR r.currency <> b.currency THEN 'amount_mismatch'
            WHEN r.status <> b.status THEN 'status_mismatch'
            ELSE 'matched' END,
       b.pse_refund_id, r.id, b.amount, b.status, b.currency, b.settled_at, b.fee
FROM batch b
LEFT JOIN yardstick_refunds r ON r.pse_account = $1 AND r.pse_refund_id = b.pse_refund_id
"""
_MISSING_IN_FILE = """
INSERT INTO yardstick_lines (line, outcome, refund_id)
SELECT 0, 'missing_in_file', r.id FROM yardstick_refunds r
WHERE r.pse_account = $1 AND r.status = 'succeeded'
  AND NOT EXISTS (SELECT 1 FROM yardstick_lines l WHERE l.refund_id = r.id)
"""
_APPLY_FEES = """
UPDATE yardstick_refunds r SET fee_amount = l.fee FROM yardstick_lines l
WHERE l.refund_id = r.id AND l.outcome = 'matched' AND l.fee IS NOT NULL
"""
_COUNTS = "SELECT outcome, count(*) AS n FROM yardstick_lines GROUP BY outcome"


async def _store(conn: asyncpg.Connection, account: str, rows: list[tuple]) -> None:
    async with conn.transaction():
        await conn.execute(_BATCH_TABLE)
        await conn.copy_records_to_table("batch", records=rows)
        await conn.execute(_JUDGE, account)


async def reconcile(dsn: str, account: str, path: Path) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[tuple] = []
        with path.open(newline="") as file:
            for line, record in enumerate(csv.DictReader(file), start=2):
                if record["type"] != "refund":
                    continue
                rows.append(
                    (
                        line,
                        record["pse_refund_id"],
                        int(record["amount"]),
                        record["currency"],
                        record["status"],
                        datetime.fromisoformat(record["settled_at"]),
                        int(record["fee"]) if record["fee"] else None,
                    )
                )
                if len(rows) == BATCH:
                    await _store(conn, account, rows)
                    rows = []
        if rows:
            await _store(conn, account, rows)
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '64MB'")
            await conn.execute(_MISSING_IN_FILE, account)
            await conn.execute(_APPLY_FEES)
        return {r["outcome"]: r["n"] for r in await conn.fetch(_COUNTS)}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(reconcile(args.dsn, args.account, args.file))))


if __name__ == "__main__":
    main()
