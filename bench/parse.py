"""Settlement-file parsing alone: the CLI's side of a reconciliation, without a database.

Writes the generic file bench/reconcile.py writes (refund lines with fees,
charges to skip, planted mismatches), then reads it with the service's parser
(`app.adapters.settlement.parsers.open_settlement`) and, in turns, with
Python's `csv.reader` alone (the least a parser of CSV can do: no checks, no
values), and prints µs per line for each (best and median of the rounds) and
the ratio, which compares across machines where the µs do not.

    .venv/bin/python bench/parse.py [--rows 300000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.adapters.settlement.parsers import open_settlement  # noqa: E402
from bench.reconcile import write_file  # noqa: E402


def parsed(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(1 for _ in open_settlement(stream, "sandbox").rows)


def csv_only(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as stream:
        return sum(1 for _ in csv.reader(stream)) - 1  # the header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "settlement.csv"
        write_file(path, args.rows)
        lines = csv_only(path)
        times: dict[str, list[float]] = {"parser": [], "csv.reader": []}
        for _ in range(args.rounds):
            for name, read in (("parser", parsed), ("csv.reader", csv_only)):
                started = time.perf_counter()
                read(path)
                times[name].append((time.perf_counter() - started) / lines * 1e6)
    print(f"{lines:,} lines (refund lines and skipped charges), {args.rounds} rounds in turns")
    for name, values in times.items():
        print(
            f"  {name:<11} µs per line: best {min(values):.2f}, "
            f"median {statistics.median(values):.2f}"
        )
    ratio = statistics.median(times["parser"]) / statistics.median(times["csv.reader"])
    print(f"  parser / csv.reader: {ratio:.2f} x the time (medians)")


if __name__ == "__main__":
    main()
