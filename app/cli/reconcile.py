"""`reconcile`: a settlement file against our refunds, with a progress bar."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from app.cli.database import with_container
from app.cli.options import ConfigOption, fail
from app.cli.settings import configure_command_logging
from app.domain.errors import DomainError
from app.domain.reconciliation import OUTCOMES

# The counts' column: as wide as the longest outcome's name.
_OUTCOME_WIDTH = max(len(outcome.value) for outcome in OUTCOMES)


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off while a file is reconciled.

    A million lines make two million objects it tracks (each line's fields
    and its row), and a collection every few hundred of them: about a second
    of the command's CPU for a million lines, finding nothing, because the
    rows hold no cycles and reference counting frees each batch. The
    command's process ends with the run; the collector is back on after it
    all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def reconcile(
    file: Annotated[
        str, typer.Argument(help="the settlement file (generic CSV or a Stripe itemized export)")
    ],
    account: Annotated[str, typer.Option(help="the PSE account the file comes from")],
    config: ConfigOption = None,
) -> None:
    """Reconcile a PSE settlement file against our refunds, with a progress bar.

    Prints the counts; exits 0 when the file was reconciled, whatever it found,
    and 2 when the file cannot be read (the error names the line; nothing is
    changed). With no configuration it works on the demo's database and its
    `sandbox` account."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    path = Path(file)
    if not path.is_file():
        fail(f"no such file {file}")
    console = Console(stderr=True)

    @contextlib.contextmanager
    def open_file() -> Iterator[IO[bytes]]:
        with path.open("rb") as stream:
            yield stream

    async def run(container: Any) -> Any:
        configure_command_logging(container.settings)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("reading", total=None)

            def progress(phase: str, done: int, total: int | None) -> None:
                bar.update(task, description=phase, completed=done, total=total)

            started = await container.reconciliations.start(account, path.name, None)
            with _without_cycle_collection():
                return await container.reconciliations.run(started.id, open_file, progress)

    try:
        result = with_container(config, run)
    except DomainError as exc:
        fail(exc.detail)
    if result.status == "failed":
        fail(f"{path.name}: {result.error}")
    typer.echo(
        f"reconciliation {result.id} ({result.file_format}, {result.rows_total} refund rows)"
    )
    for outcome, count in result.counts.items():
        typer.echo(f"  {outcome:<{_OUTCOME_WIDTH}} {count}")
    if result.adopted:
        settled = "settled by the file"
        typer.echo(f"  {settled:<{_OUTCOME_WIDTH}} {result.adopted} (were unknown or pending)")
