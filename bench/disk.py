"""The disk's flush latency: what every commit waits for, measured alone.

A commit returns once PostgreSQL's WAL is flushed to disk (`fdatasync`), so
a slow flush holds every transaction committing at that moment, whatever
the service does. This script writes an 8 KiB page and flushes it, every
`--pause` ms for `--duration` s, in a scratch file in `--dir` (by default
PostgreSQL's data directory when this user can write there, else the
system's temporary directory), and prints the flushes' latency: p50, p99,
p99.9, max, and each flush over `--slow` ms with its second.

    .venv/bin/python bench/disk.py [--duration 60] [--pause 5] [--slow 50] [--dir DIR]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

pg_test_fsync (PostgreSQL's own tool) reports averages; a p99 latency target
is missed by the outliers, which an average hides. Run it alone, and again
beside a bench to see the load's own flushes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.refunds import DEFAULT_ADMIN_DSN  # noqa: E402

PAGE = b"\0" * 8192


async def data_directory(dsn: str) -> Path | None:
    """PostgreSQL's data directory, when it answers and this user may write there."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        found = Path(await conn.fetchval("SHOW data_directory"))
    except asyncpg.PostgresError:  # not a superuser
        return None
    finally:
        await conn.close()
    return found if os.access(found, os.W_OK) else None


def flushes(directory: Path, duration: float, pause: float) -> list[tuple[float, float]]:
    """(second of the run, seconds the flush took) for each flush."""
    fd, name = tempfile.mkstemp(prefix="disk-bench-", dir=directory)
    taken = []
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            os.pwrite(fd, PAGE, 0)
            began = time.perf_counter()
            os.fdatasync(fd)
            taken.append((began - start, time.perf_counter() - began))
            time.sleep(pause)
    finally:
        os.close(fd)
        os.unlink(name)
    return taken


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of flushing")
    parser.add_argument("--pause", type=float, default=5, help="ms between flushes")
    parser.add_argument("--slow", type=float, default=50, help="ms: list the flushes over this")
    parser.add_argument("--dir", type=Path, help="where to write the scratch file")
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="to find the data directory")
    args = parser.parse_args()
    directory = args.dir or asyncio.run(data_directory(args.dsn)) or Path(tempfile.gettempdir())
    print(f"flushing an 8 KiB page every {args.pause:g} ms for {args.duration:g} s in {directory}")
    taken = flushes(directory, args.duration, args.pause / 1000)
    ordered = sorted(d for _, d in taken)
    slow = [(at, d) for at, d in taken if d * 1000 > args.slow]
    print(
        f"{len(ordered):,} flushes (fdatasync), ms: p50 {percentile(ordered, 50) * 1e3:.2f}   "
        f"p99 {percentile(ordered, 99) * 1e3:.2f}   p99.9 {percentile(ordered, 99.9) * 1e3:.2f}   "
        f"max {ordered[-1] * 1e3:.1f}"
    )
    print(
        f"over {args.slow:g} ms: {len(slow)}"
        + (
            " (second of the run: ms) " + ", ".join(f"{at:.1f}: {d * 1e3:.0f}" for at, d in slow)
            if slow
            else ""
        )
    )


if __name__ == "__main__":
    main()
