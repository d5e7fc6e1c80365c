"""Refund creation of this checkout against another one, or against the
same-protocol yardstick, in interleaved bursts.

    .venv/bin/python bench/compare.py --against ../other-checkout [--rounds 8] [--burst 8]
    .venv/bin/python bench/compare.py --yardstick [--rounds 8] [--burst 8]

On a shared machine the speed of one core drifts by 10-30 % within minutes,
so two `bench/refunds.py` runs made one after the other compare the machine
as much as the code. This script starts both services at once (each with its
own scratch database, migrated by its own code, and the same PSE double),
then loads them in turns: a short wrk burst on one, then on the other, for
`--rounds` rounds, starting with a different side each round. Each side
answers while the other is idle, and any drift hits both alike.

The other checkout needs its own virtualenv (`make install-dev` in it); its
commit is printed. Prints each side's requests per second per round, the
median of each, and the median of the per-round ratios (this / other) with
its spread: the figure to quote for "not slower than before by more than
5 %". Checks afterwards that every refund created was sent to the PSE.

With `--yardstick` the other side is bench/protocol_yardstick.py (the
service's protocol in the least code, as `bench/refunds.py` runs it), on a
scratch database of its own prepared as the service's: the per-round ratio
is then issue 17's "service / same-protocol yardstick", with the machine's
drift taken out.

Needs wrk and PostgreSQL as `bench/refunds.py` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.protocol_yardstick import DDL as PROTOCOL_YARDSTICK_DDL  # noqa: E402
from bench.refunds import (  # noqa: E402
    LOOPBACK,
    REFUNDS_LUA,
    SANDBOX_KEY,
    BenchError,
    Child,
    Children,
    Load,
    ScratchDb,
    child_env,
    free_port,
    measure,
    protocol_statuses,
    refund_statuses,
    run_command,
    seed_payments,
    service_toml,
    start_pse,
    start_uvicorn,
    wait_drained,
    wait_http,
    wait_submissions,
)


@dataclass
class Side:
    """One checkout: its code, its database, its running service (or, with
    `yardstick`, the same-protocol yardstick on a database set up by it)."""

    label: str
    root: Path
    db: ScratchDb
    yardstick: bool = False
    ids_file: Path | None = None
    key: str = ""
    base_url: str = ""
    child: Child | None = None
    rates: list[float] = field(default_factory=list)

    @property
    def cli(self) -> list[str]:
        script = self.root / ".venv" / "bin" / "pse-refunds"
        if not script.exists():
            raise BenchError(f"{self.root} has no virtualenv (run make install-dev there)")
        return [str(script)]

    def env(self, config: Path) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
        env["PYTHONPATH"] = str(self.root)
        env["PSE_REFUNDS_CONFIG_FILE"] = str(config)
        return env

    def commit(self) -> str:
        if self.yardstick:
            return "bench/protocol_yardstick.py"
        found = subprocess.run(
            ["git", "-C", str(self.root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout.strip()[:72] or "(not a git checkout)"

    def config_text(self, pse_url: str) -> str:
        """The bench's service TOML, without the sections this side's code lacks."""
        text = service_toml(self.db.url, pse_url)
        config_py = (self.root / "app" / "config.py").read_text()
        if "rate_limits" not in config_py:
            text = re.sub(r"\n\[rate_limits\]\n(?:[^\[\n].*\n)*", "\n", text)
        return text


async def prepare(side: Side, workdir: Path, payments: int, pse_url: str) -> None:
    """Its scratch database, migrated by its own code; payments; a store key."""
    config = workdir / f"{side.label}.toml"
    config.write_text(side.config_text(pse_url))
    admin = side.db.admin_dsn
    import asyncpg

    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{side.db.name}"')
        side.db.created = True
    finally:
        await conn.close()
    for argv in (
        [*side.cli, "migrate"],
        [*side.cli, "keys", "create", "--name", "bench", "--role", "store", "--json"],
    ):
        status, out, err = await run_command(argv, within=180, env=side.env(config), cwd=workdir)
        if status != 0:
            raise BenchError(f"{side.label}: {argv[1]} failed ({status}): {err or out}")
    side.key = str(json.loads(out)["key"])
    conn = await side.db.connect()
    try:
        seeded = await seed_payments(conn, payments)
        if side.yardstick:
            await conn.execute(PROTOCOL_YARDSTICK_DDL)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    side.ids_file = workdir / f"{side.label}-payments.txt"
    side.ids_file.write_text("".join(f"{p.id}\n" for p in seeded))


async def start(side: Side, children: Children, workdir: Path, pse_url: str) -> None:
    if side.yardstick:
        side.child, side.base_url = await start_uvicorn(
            children,
            side.label,
            "bench.protocol_yardstick:app",
            child_env(
                PROTOCOL_YARDSTICK_DSN=side.db.dsn,
                PROTOCOL_YARDSTICK_PSE_URL=pse_url,
                PROTOCOL_YARDSTICK_PSE_KEY=SANDBOX_KEY,
            ),
        )
        return
    port = free_port()
    argv = [*side.cli, "serve", "--host", LOOPBACK, "--port", str(port)]
    side.child = await children.start(side.label, argv, side.env(workdir / f"{side.label}.toml"))
    side.base_url = f"http://{LOOPBACK}:{port}"
    await wait_http(f"{side.base_url}/readyz", side.child)


async def burst(side: Side, script: Path, load: Load) -> float:
    assert side.ids_file is not None
    result = await measure(
        side.label,
        f"{side.base_url}/refund" if side.yardstick else f"{side.base_url}/v1/refunds",
        script,
        [str(side.ids_file), side.key],
        load,
        settle=side.db.analyze,
    )
    return result.rps


async def statuses(side: Side) -> Counter[str]:
    return await (protocol_statuses(side.db) if side.yardstick else refund_statuses(side.db))


async def drained(side: Side) -> Counter[str]:
    if side.yardstick:
        return (await wait_drained(lambda: protocol_statuses(side.db)))[1]
    return (await wait_submissions(side.db))[1]


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="refunds-compare-"))
    children = Children(workdir)
    sides = [
        Side("this", ROOT, ScratchDb(args.dsn)),
        Side("yardstick", ROOT, ScratchDb(args.dsn), yardstick=True)
        if args.yardstick
        else Side("other", args.against, ScratchDb(args.dsn)),
    ]
    load = Load(args.burst, args.warmup, args.connections, args.threads)
    script = workdir / "refunds.lua"
    script.write_text(REFUNDS_LUA)
    try:
        _pse, pse_url = await start_pse(children, "double")
        for side in sides:
            await prepare(side, workdir, args.payments, pse_url)
            await start(side, children, workdir, pse_url)
            print(f"{side.label:>5}: {side.commit()} ({side.root})", flush=True)
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                side.rates.append(await burst(side, script, load))
                await drained(side)
            print(
                f"round {round_ + 1}: " + ", ".join(f"{s.label} {s.rates[-1]:.1f}" for s in sides),
                flush=True,
            )
        for side in sides:
            after = await drained(side)
            left = {k: v for k, v in after.items() if k not in ("pending", "succeeded")}
            if left:
                raise BenchError(f"{side.label}: refunds not sent to the PSE: {left}")
        this, other = sides
        ratios = [a / b for a, b in zip(this.rates, other.rates, strict=True)]
        print(
            f"\nrefund creation, {args.rounds} rounds of {args.burst:g} s per side "
            f"({args.connections} connections), req/s median (min-max):"
        )
        for side in sides:
            print(
                f"  {side.label:>5}: {statistics.median(side.rates):7.1f} "
                f"({min(side.rates):.1f}-{max(side.rates):.1f})"
            )
        print(
            f"  this / {other.label}, per round: median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
        counts = [sum((await statuses(s)).values()) for s in sides]
        print(f"  refunds created: this {counts[0]:,}, {other.label} {counts[1]:,}; all sent")
    finally:
        await children.stop_all()
        for side in sides:
            await side.db.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    against = parser.add_mutually_exclusive_group(required=True)
    against.add_argument("--against", type=Path, help="the other checkout (with its .venv)")
    against.add_argument(
        "--yardstick",
        action="store_true",
        help="compare with the same-protocol yardstick (bench/protocol_yardstick.py)",
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--burst", type=float, default=8.0, help="seconds of load per side")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    if args.against is not None:
        args.against = args.against.resolve()
    if args.against is not None and not (args.against / "app").is_dir():
        print(f"bench/compare.py: {args.against} is not a checkout of this service")
        return 2
    try:
        asyncio.run(run(args))
    except BenchError as error:
        print(f"bench/compare.py: FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
