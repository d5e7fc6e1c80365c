"""`pse-refunds reconcile`'s counts, without a database: the run is stubbed."""

from __future__ import annotations

import asyncio
import gc
import importlib
import re
from types import SimpleNamespace

from typer.testing import CliRunner

from app.cli import cli
from app.domain.reconciliation import OUTCOMES, empty_counts

# The module (`app.cli.reconcile` names the command on the package).
command = importlib.import_module("app.cli.reconcile")


def test_the_counts_line_up_under_the_longest_outcome_name(tmp_path, monkeypatch):
    counts = {**empty_counts(), "matched": 3, "dispute_missing_in_service": 12}
    run = SimpleNamespace(
        id="rec_1",
        status="completed",
        error=None,
        file_format="generic",
        rows_total=15,
        counts=counts,
        adopted=2,
    )
    monkeypatch.setattr(command, "with_container", lambda _config, _run: run)
    settlement = tmp_path / "settlement.csv"
    settlement.write_text("")

    result = CliRunner().invoke(cli, ["reconcile", "--account", "stripe_jp", str(settlement)])

    assert result.exit_code == 0, result.output
    first, *rows = result.output.splitlines()
    assert first == "reconciliation rec_1 (generic, 15 refund rows)"
    found = [
        re.fullmatch(r"  (\S+(?: \S+)*) +(\d+)( \(were unknown or pending\))?", r) for r in rows
    ]
    assert all(found), rows
    assert [m.group(1) for m in found] == [o.value for o in OUTCOMES] + ["settled by the file"]
    # Every count starts in one column, one space after the longest name.
    width = max(len(o.value) for o in OUTCOMES)
    assert {m.start(2) for m in found} == {2 + width + 1}
    assert [m.group(2) for m in found] == [str(counts[o.value]) for o in OUTCOMES] + ["2"]


def test_the_cycle_collector_is_off_while_the_file_is_reconciled_and_on_again_after(
    tmp_path, monkeypatch
):
    seen: list[bool] = []

    class Reconciliations:
        async def start(self, _account, _name, _created_by):
            return SimpleNamespace(id="rec_1")

        async def run(self, _reconciliation_id, _open_file, _progress):
            seen.append(gc.isenabled())
            if len(seen) == 2:
                raise RuntimeError("the run broke")
            return SimpleNamespace(
                id="rec_1",
                status="completed",
                error=None,
                file_format="generic",
                rows_total=0,
                counts=empty_counts(),
                adopted=0,
            )

    container = SimpleNamespace(settings=None, reconciliations=Reconciliations())
    monkeypatch.setattr(command, "configure_command_logging", lambda _settings: None)
    monkeypatch.setattr(command, "with_container", lambda _c, run: asyncio.run(run(container)))
    settlement = tmp_path / "settlement.csv"
    settlement.write_text("")
    assert gc.isenabled()

    done = CliRunner().invoke(cli, ["reconcile", "--account", "stripe_jp", str(settlement)])
    broke = CliRunner().invoke(cli, ["reconcile", "--account", "stripe_jp", str(settlement)])

    assert done.exit_code == 0, done.output
    assert isinstance(broke.exception, RuntimeError)
    assert seen == [False, False]
    assert gc.isenabled()
