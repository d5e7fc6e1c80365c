"""Reconciliation speed and memory: a 1,000,000-row generic settlement file.

Seeds a scratch PostgreSQL database with the refunds the file settles, writes
the file, then runs `pse-refunds reconcile` as a child process and prints
its wall time and peak RSS (targets: <= 10 s, <= 200 MB on a 2-core machine).
Then, in the same run and on the same database, the reconciliation yardstick
(bench/reconcile_yardstick.py: the same file judged and stored in the least
code, on its own copy of the refunds) does the same work; the script checks
that both found the same counts and prints service / yardstick, which
compares across machines where the seconds do not.

    .venv/bin/python bench/reconcile.py [--rows 1000000] [--keep-db] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Everything runs on this machine (loopback PostgreSQL); the scratch database
is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.adapters.db.engine import migrate  # noqa: E402
from bench.reconcile_yardstick import DDL as YARDSTICK_DDL  # noqa: E402
from bench.reconcile_yardstick import OUTCOMES as YARDSTICK_OUTCOMES  # noqa: E402
from bench.reconcile_yardstick import SEED as YARDSTICK_SEED  # noqa: E402
from bench.refunds import SEED_PAYMENT_COLUMNS, _busy_seconds, _reaped_children_cpu  # noqa: E402

# Runs each child and reports its own peak RSS (see its docstring).
PEAK_RSS = ROOT / "bench" / "peak_rss.py"
HEADER = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


async def seed(dsn: str, rows: int) -> None:
    """One refund per file row (succeeded, with a PSE id), ten per payment."""
    conn = await asyncpg.connect(dsn)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    try:
        payments = [
            (
                f"pay_{i:012d}",
                "bench",
                f"pi_{i}",
                None,
                100_000,
                "JPY",
                now,
                "card",
                "normal",
                "JPY",
                "1",
                10_000,
                0,
                now,
                now,
            )
            for i in range(rows // 10 + 1)
        ]
        await conn.copy_records_to_table(
            "payments",
            records=payments,
            columns=SEED_PAYMENT_COLUMNS,
        )
        del payments
        batch = []
        for i in range(rows):
            at = now + timedelta(seconds=i)
            batch.append(
                (
                    f"rf_{i:012d}",
                    f"pay_{i // 10:012d}",
                    "bench",
                    1000,
                    "JPY",
                    "succeeded",
                    "requested_by_customer",
                    None,
                    "{}",
                    "[]",
                    False,
                    None,
                    True,
                    "key_bench",
                    f"re_{i:012d}",
                    1000,
                    "JPY",
                    0,
                    0,
                    at,
                    at,
                )
            )
            if len(batch) == 100_000:
                await _copy_refunds(conn, batch)
                batch = []
        await _copy_refunds(conn, batch)
        # A live database has statistics (autovacuum); a freshly copied one does not.
        await conn.execute("ANALYZE payments; ANALYZE refunds")
        await conn.execute(YARDSTICK_DDL)
        await conn.execute(YARDSTICK_SEED)
    finally:
        await conn.close()


async def _copy_refunds(conn: asyncpg.Connection, batch: list[tuple]) -> None:
    if batch:
        await conn.copy_records_to_table(
            "refunds",
            records=batch,
            columns=[
                "id",
                "payment_id",
                "pse_account",
                "amount",
                "currency",
                "status",
                "reason",
                "note",
                "metadata",
                "required_approvals",
                "offline",
                "offline_reason",
                "auto_approved",
                "created_by",
                "pse_refund_id",
                "settlement_amount",
                "settlement_currency",
                "submit_attempts",
                "resolve_attempts",
                "created_at",
                "updated_at",
            ],
        )


def write_file(path: Path, rows: int) -> dict[str, int]:
    rng = random.Random(7)
    expected = {"amount_mismatch": 0, "status_mismatch": 0, "missing_in_service": 0}
    start = datetime(2026, 11, 20, tzinfo=UTC)
    with path.open("w") as out:
        out.write(HEADER)
        for i in range(rows):
            roll = rng.random()
            pse_id, amount, status = f"re_{i:012d}", 1000, "succeeded"
            if roll < 0.01:
                amount = 999
                expected["amount_mismatch"] += 1
            elif roll < 0.015:
                status = "failed"
                expected["status_mismatch"] += 1
            elif roll < 0.016:
                pse_id = f"re_ghost_{i}"
                expected["missing_in_service"] += 1
            settled = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            fee = "3" if i % 10 == 0 else ""
            out.write(f"{pse_id},,refund,{amount},JPY,{status},{settled},{fee},,\n")
            if i % 50 == 0:
                out.write(f"ch_{i},,charge,5000,JPY,succeeded,{settled},,,\n")
    return expected


@dataclass
class Cpu:
    """CPU seconds during a child's run: its own, and the whole machine's
    (PostgreSQL's backends for the most part, on an otherwise idle machine)."""

    child: float
    machine: float

    def describe(self, wall: float) -> str:
        return (
            f"CPU: {self.child:.1f} s the process, {self.machine - self.child:.1f} s the rest "
            f"of the machine (PostgreSQL), {self.machine / wall:.2f} of "
            f"{os.cpu_count()} cores busy"
        )


def run_child(
    argv: list[str], peak_file: Path, **options: Any
) -> tuple[subprocess.CompletedProcess[str], float, float, Cpu]:
    """`python argv…` under bench/peak_rss.py: what it printed, its wall time,
    its peak RSS in MB (NaN if it died before writing it) and the CPU used."""
    busy, reaped = _busy_seconds(), _reaped_children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(PEAK_RSS), str(peak_file), *argv],
        capture_output=True,
        text=True,
        check=False,
        **options,
    )
    elapsed = time.perf_counter() - started
    cpu = Cpu(_reaped_children_cpu() - reaped, _busy_seconds() - busy)
    peak_mb = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    return done, elapsed, peak_mb, cpu


def run_yardstick(dsn: str, file: Path, work: Path) -> tuple[float, float, Cpu, dict[str, int]]:
    """The yardstick's wall time, peak RSS (MB), CPU and counts by outcome."""
    done, elapsed, peak_mb, cpu = run_child(
        [
            str(ROOT / "bench" / "reconcile_yardstick.py"),
            "--dsn",
            dsn,
            "--account",
            "bench",
            str(file),
        ],
        work / "yardstick_peak_rss_kb",
    )
    if done.returncode != 0:
        raise SystemExit(f"the yardstick failed: {done.stderr[-2000:]}")
    return elapsed, peak_mb, cpu, json.loads(done.stdout)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="do not drop the scratch database at the end"
    )
    args = parser.parse_args()
    name = f"refunds_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = args.dsn.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    try:
        await asyncio.to_thread(migrate, url)
        with tempfile.TemporaryDirectory() as workdir:
            work = Path(workdir)
            t0 = time.perf_counter()
            await seed(dsn, args.rows)
            file = work / "settlement.csv"
            expected = write_file(file, args.rows)
            print(
                f"seeded {args.rows:,} refunds and wrote {file.stat().st_size / 1e6:.0f} MB "
                f"in {time.perf_counter() - t0:.1f} s"
            )
            config = work / "pse-refunds.toml"
            config.write_text(
                f'database_url = "{url}"\nlog_level = "info"\n'
                '[accounts.bench]\nprovider = "sandbox"\napi_key = "k"\n'
                'base_url = "http://127.0.0.1:9"\n'
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
            env.update(PSE_REFUNDS_CONFIG_FILE=str(config), PYTHONPATH=str(ROOT))
            profile = (
                ["-m", "pyinstrument", "-o", os.environ["BENCH_PROFILE"]]
                if os.environ.get("BENCH_PROFILE")
                else []
            )
            done, elapsed, peak_mb, cpu = run_child(
                [*profile, "-m", "app.cli", "reconcile", "--account", "bench", str(file)],
                work / "peak_rss_kb",
                cwd=work,
                env=env,
            )
            print(done.stdout.strip())
            completed = [ln for ln in done.stderr.splitlines() if "reconciliation.completed" in ln]
            print("\n".join(completed))
            if done.returncode != 0:
                print(done.stderr[-2000:])
                raise SystemExit(done.returncode)
            print(f"expected: {expected}")
            print(
                f"reconcile: {args.rows:,} rows in {elapsed:.1f} s "
                f"({args.rows / elapsed:,.0f} rows/s), peak RSS {peak_mb:.0f} MB "
                f"(targets: <= 10 s, <= 200 MB)"
            )
            print(f"  {cpu.describe(elapsed)}")
            service_counts = json.loads(completed[-1])
            yard_elapsed, yard_peak_mb, yard_cpu, yard_counts = run_yardstick(dsn, file, work)
            # Both ways: an outcome one of them never found counts as 0 there.
            differing = {
                outcome: (service_counts.get(outcome, 0), yard_counts.get(outcome, 0))
                for outcome in {*YARDSTICK_OUTCOMES, *yard_counts}
                if service_counts.get(outcome, 0) != yard_counts.get(outcome, 0)
            }
            if differing:
                raise SystemExit(f"the yardstick's counts differ (service, yardstick): {differing}")
            print(
                f"yardstick: {args.rows:,} rows in {yard_elapsed:.1f} s, "
                f"peak RSS {yard_peak_mb:.0f} MB, the same counts"
            )
            print(f"  {yard_cpu.describe(yard_elapsed)}")
            print(f"service / yardstick: {yard_elapsed / elapsed:.2f} x the yardstick's speed")
    finally:
        if args.keep_db:
            print(f"kept database {name}: {dsn}")
        else:
            admin = await asyncpg.connect(args.dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
