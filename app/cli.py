"""`pse-refunds`: serve, migrate, manage keys, run the sandbox PSE."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Annotated, Any

import typer

from app.config import ConfigError, Settings, has_any_configuration, load_settings

cli = typer.Typer(
    name="pse-refunds",
    help="Refund lifecycle service between online stores and their PSEs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

DEMO_KEY_PREFIX = "demo-"
DEMO_ROLES: list[tuple[str, list[str], int | None]] = [
    ("store", ["store"], None),
    ("approver-1", ["approver"], 1),
    ("approver-2", ["approver"], 2),
    ("ops", ["ops"], None),
    ("admin", ["admin"], 3),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(f"pse-refunds: {exc}", err=True)
        raise typer.Exit(2) from None


def _ready_settings() -> Settings:
    """Settings for commands that use the database; the embedded SQLite is
    migrated first, as `serve` does."""
    settings = _settings()
    if settings.is_sqlite:
        from app.adapters.db.engine import migrate as run_migrations

        run_migrations(settings.database_url)
    return settings


def _redactor(settings: Settings) -> Any:
    from app.config import secrets_of
    from app.redaction import Redactor

    return Redactor(secrets_of(settings))


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from app.adapters.db.engine import migrate as run_migrations

    settings = _settings()
    run_migrations(settings.database_url)
    typer.echo("schema at head")


def demo_settings(host: str, port: int) -> tuple[Settings, Any]:
    """The embedded demo: SQLite, a sandbox PSE served by this process, example tiers."""
    from app.sandbox.config import SandboxConfig, new_webhook_secret

    secret = new_webhook_secret()
    api_key = "sk_sandbox_demo"
    loopback = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    base = f"http://{loopback}:{port}"
    settings = load_settings(
        demo=True,
        log_format="console",
        accounts={
            "sandbox": {
                "provider": "sandbox",
                "api_key": api_key,
                "webhook_secrets": [secret],
                "base_url": f"{base}/sandbox",
                "timeout_seconds": 5,
                "max_attempts": 3,
            }
        },
        policy={
            "approval_tiers": [
                {"currency": "JPY", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "JPY", "above": 100000, "approvals": 2, "min_level": 2},
                {"currency": "USD", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "USD", "above": 100000, "approvals": 2, "min_level": 2},
            ]
        },
    )
    sandbox = SandboxConfig(
        api_key=api_key,
        webhook_url=f"{base}/v1/webhooks/sandbox",
        webhook_secret=secret,
    )
    return settings, sandbox


async def _demo_keys(settings: Settings) -> list[tuple[str, str, list[str], int | None]]:
    """Revoke the previous run's demo keys and print fresh ones (secrets are never stored)."""
    from app.bootstrap import build_container

    container = build_container(settings)
    try:
        for key in await container.keys.list():
            if key.name.startswith(DEMO_KEY_PREFIX) and key.active:
                await container.keys.revoke(key.id)
        created = []
        for name, roles, level in DEMO_ROLES:
            _key, secret = await container.keys.create(DEMO_KEY_PREFIX + name, roles, level)
            created.append((name, secret, roles, level))
        return created
    finally:
        await container.aclose()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            show_default=False,
            help="API processes sharing the port; more than one needs PostgreSQL "
            "(default: server.workers of the configuration, else 1)",
        ),
    ] = None,
) -> None:
    """Run the HTTP API and, unless `[worker] enabled = false`, the background worker.

    With no configuration at all (no config file, no PSE_REFUNDS_ variables)
    it starts the embedded demo: SQLite, a `sandbox` PSE account served by this
    same process, and one demo key per role printed below.

    With `--workers N` (N > 1) it runs N processes on the port, each with its
    own background worker; this needs PostgreSQL.
    """
    import uvicorn

    from app.adapters.db.engine import migrate as run_migrations
    from app.api.app import create_app
    from app.bootstrap import build_container
    from app.logs import configure_logging

    demo = not has_any_configuration()
    if demo and workers is not None and workers > 1:
        typer.echo(
            f"pse-refunds: --workers {workers}: the embedded demo runs in one process "
            "(SQLite, and its sandbox PSE lives in that process); configure a PostgreSQL "
            "database_url to run several",
            err=True,
        )
        raise typer.Exit(2)
    sandbox_cfg = None
    if demo:
        settings, sandbox_cfg = demo_settings(host, port)
    else:
        settings = _settings()
    processes = workers if workers is not None else settings.server.workers
    if processes > 1 and settings.is_sqlite:
        source = (
            f"--workers {processes}" if workers is not None else f"server.workers = {processes}"
        )
        typer.echo(
            f"pse-refunds: {source}: several processes need PostgreSQL "
            "(SQLite has one writer); set a postgresql+asyncpg:// database_url or run one",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_format, settings.log_level, _redactor(settings))
    if processes > 1:
        _serve_processes(settings, host, port, processes)
        return
    if settings.is_sqlite:
        run_migrations(settings.database_url)
    if demo:
        keys = _run(_demo_keys(settings))
        _print_demo_banner(host, port, keys)

    def factory() -> Any:
        try:
            container = build_container(settings)
        except ConfigError as exc:
            typer.echo(f"pse-refunds: {exc}", err=True)
            sys.exit(2)
        mounts = {}
        if sandbox_cfg is not None:
            from app.sandbox.app import create_sandbox_app

            mounts["/sandbox"] = create_sandbox_app(sandbox_cfg)
        return create_app(container, extra_mounts=mounts, run_worker=True)

    uvicorn.run(factory, host=host, port=port, **_UVICORN)


SERVED_APP = "app.cli:app_from_environment"
# How `serve` runs uvicorn, with one process or several.
_UVICORN: dict[str, Any] = {
    "factory": True,
    "log_level": "warning",
    "access_log": False,
    "lifespan": "on",
    "timeout_graceful_shutdown": 30,
}


def _serve_processes(settings: Settings, host: str, port: int, processes: int) -> None:
    """`processes` uvicorn workers on one socket, each building its app with
    `app_from_environment`, their metrics merged through a fresh directory that
    lives as long as this command."""
    import shutil
    import tempfile

    import uvicorn

    from app.metrics import MULTIPROC_DIR_VAR

    _check_buildable(settings)
    metrics_dir = tempfile.mkdtemp(prefix="pse-refunds-metrics-")
    previous = os.environ.get(MULTIPROC_DIR_VAR)
    os.environ[MULTIPROC_DIR_VAR] = metrics_dir
    try:
        uvicorn.run(SERVED_APP, workers=processes, host=host, port=port, **_UVICORN)
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_VAR, None)
        else:
            os.environ[MULTIPROC_DIR_VAR] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _check_buildable(settings: Settings) -> None:
    """Refuse here, once, what would stop every process at its start (an
    adapter refusing its account's settings)."""
    from app.bootstrap import build_container

    async def build_and_close() -> None:
        container = build_container(settings)
        await container.aclose()

    try:
        _run(build_and_close())
    except ConfigError as exc:
        typer.echo(f"pse-refunds: {exc}", err=True)
        raise typer.Exit(2) from None


def app_from_environment() -> Any:
    """The app of one process of `serve --workers N`: settings from the same
    sources as the command's (the file named by PSE_REFUNDS_CONFIG_FILE or
    ./pse-refunds.toml, PSE_REFUNDS_ variables), its own background worker and
    audit flusher, and metrics shared through PROMETHEUS_MULTIPROC_DIR."""
    from uvicorn.config import STARTUP_FAILURE

    from app.api.app import create_app
    from app.bootstrap import build_container
    from app.logs import configure_logging
    from app.metrics import MULTIPROC_DIR_VAR, Metrics

    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level, _redactor(settings))
        metrics = Metrics(multiprocess_dir=os.environ.get(MULTIPROC_DIR_VAR))
        container = build_container(settings, metrics=metrics)
    except ConfigError as exc:
        typer.echo(f"pse-refunds: {exc}", err=True)
        # Not restarted by the supervising process: it would fail the same way.
        sys.exit(STARTUP_FAILURE)
    return create_app(container, run_worker=True)


def _print_demo_banner(host: str, port: int, keys: list[tuple[str, str, list[str], int | None]]):  # type: ignore[no-untyped-def]
    url = f"http://{host}:{port}"
    lines = [
        "",
        "PSE Refund Service: embedded demo (SQLite ./pse-refunds.db, sandbox PSE at /sandbox)",
        f"  API docs:  {url}/docs",
        "  Demo API keys (new on every start; earlier demo keys are revoked):",
    ]
    for name, secret, _roles, level in keys:
        label = f"{name} (level {level})" if level and name.startswith("approver") else name
        lines.append(f"    {label:<20} {secret}")
    store = keys[0][1]
    lines += [
        "",
        "  Try it:",
        f"    curl -s -X POST {url}/v1/payments -H 'Authorization: Bearer {store}' \\",
        '      -H \'Content-Type: application/json\' -d \'{"pse_account":"sandbox",'
        '"pse_payment_id":"pay_demo_1","amount":50000,"currency":"JPY",'
        '"captured_at":"2026-11-01T10:00:00Z"}\'',
        "",
    ]
    typer.echo("\n".join(lines))


@cli.command()
def worker() -> None:
    """Run the background worker alone (no HTTP): resolves unknown, stale pending,
    orphaned submitting and never-sent approved refunds. Stops cleanly on SIGTERM."""
    import signal

    from app.bootstrap import build_container
    from app.logs import configure_logging

    settings = _ready_settings()
    configure_logging(settings.log_format, settings.log_level, _redactor(settings))

    async def main() -> None:
        try:
            container = build_container(settings)
        except ConfigError as exc:
            typer.echo(f"pse-refunds: {exc}", err=True)
            raise typer.Exit(2) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        audit_stop = asyncio.Event()
        sealing = asyncio.create_task(container.audit.run(audit_stop))
        try:
            await container.worker.run(stop)
        finally:
            await container.aclose()
            audit_stop.set()
            await sealing

    _run(main())


@cli.command()
def sandbox(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
    api_key: Annotated[str, typer.Option(help="the key clients must send")] = "sk_sandbox_demo",
    webhook_url: Annotated[str | None, typer.Option(help="where to POST signed webhooks")] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(help="whsec_… secret to sign webhooks (printed when generated)"),
    ] = None,
    settle_delay: Annotated[float, typer.Option(help="seconds from pending to final")] = 0.3,
    seed: Annotated[int | None, typer.Option(help="seed for fault decisions")] = None,
    faults: Annotated[
        str | None,
        typer.Option(help='faults as JSON, e.g. \'{"latency_ms": 200, "failure_rate": 0.1}\''),
    ] = None,
) -> None:
    """Run the sandbox PSE standalone (faults switchable at PUT /_control/faults)."""
    from app.sandbox.config import Faults, SandboxConfig, new_webhook_secret
    from app.sandbox.server import run_sandbox

    secret = webhook_secret or new_webhook_secret()
    if webhook_secret is None:
        typer.echo(f"webhook secret: {secret}")
    try:
        fault_set = Faults.from_json(json.loads(faults)) if faults else Faults()
    except (ValueError, TypeError) as exc:
        typer.echo(f"pse-refunds: --faults: {exc}", err=True)
        raise typer.Exit(2) from None
    config = SandboxConfig(
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=secret,
        settle_delay_seconds=settle_delay,
        seed=seed,
    )
    run_sandbox(host, port, config, fault_set)


@cli.command()
def reconcile(
    file: Annotated[
        str, typer.Argument(help="the settlement file (generic CSV or a Stripe itemized export)")
    ],
    account: Annotated[str, typer.Option(help="the PSE account the file comes from")],
) -> None:
    """Reconcile a PSE settlement file against our refunds, with a progress bar.

    Prints the counts; exits 0 when the file was reconciled, whatever it found,
    and 2 when the file cannot be read (the error names the line; nothing is
    changed)."""
    import contextlib
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from app.bootstrap import build_container
    from app.domain.errors import DomainError

    path = Path(file)
    if not path.is_file():
        typer.echo(f"pse-refunds: no such file {file}", err=True)
        raise typer.Exit(2)
    settings = _ready_settings()
    from app.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level, _redactor(settings))
    console = Console(stderr=True)

    @contextlib.contextmanager
    def open_file() -> Any:
        with path.open("rb") as stream:
            yield stream

    async def main() -> Any:
        container = build_container(settings)
        try:
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
                return await container.reconciliations.run(started.id, open_file, progress)
        finally:
            await container.aclose()

    try:
        result = _run(main())
    except DomainError as exc:
        typer.echo(f"pse-refunds: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    if result.status == "failed":
        typer.echo(f"pse-refunds: {path.name}: {result.error}", err=True)
        raise typer.Exit(2)
    typer.echo(
        f"reconciliation {result.id} ({result.file_format}, {result.rows_total} refund rows)"
    )
    for outcome, count in result.counts.items():
        typer.echo(f"  {outcome:<20} {count}")
    if result.adopted:
        typer.echo(f"  settled by the file  {result.adopted} (were unknown or pending)")


audit_cli = typer.Typer(help="Verify, export and purge the audit trail.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")


def _with_container(work: Any) -> Any:
    """Run `work(container)` against the configured database, then close it."""
    from app.bootstrap import build_container

    settings = _ready_settings()

    async def main() -> Any:
        container = build_container(settings)
        try:
            return await work(container)
        finally:
            await container.aclose()

    return _run(main())


@audit_cli.command("verify")
def audit_verify() -> None:
    """Walk the hash chain; exit 1 naming the first record edited, deleted or reordered."""
    verification = _with_container(lambda c: c.audit.verify())
    if verification.ok:
        typer.echo(
            f"audit chain intact: {verification.checked} records "
            f"({verification.first_seq}..{verification.last_seq})"
        )
        return
    typer.echo(f"audit chain BROKEN at {verification.broken}", err=True)
    raise typer.Exit(1)


@audit_cli.command("export")
def audit_export(
    from_: Annotated[str | None, typer.Option("--from", help="RFC 3339, inclusive")] = None,
    to: Annotated[str | None, typer.Option("--to", help="RFC 3339, exclusive")] = None,
) -> None:
    """Print the records of a period as JSON Lines, oldest first (for a regulator or acquirer)."""
    from datetime import datetime

    def moment(value: str | None, name: str) -> Any:
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            typer.echo(f"pse-refunds: {name}: {value!r} is not an RFC 3339 time", err=True)
            raise typer.Exit(2) from None
        if parsed.tzinfo is None:
            typer.echo(f"pse-refunds: {name}: give a time zone (e.g. Z)", err=True)
            raise typer.Exit(2)
        return parsed

    start, end = moment(from_, "--from"), moment(to, "--to")

    async def export(container: Any) -> int:
        from app.services.views import audit_view

        count = 0
        async for record in container.audit.export(start, end):
            sys.stdout.write(json.dumps(audit_view(record), ensure_ascii=False) + "\n")
            count += 1
        return count

    count = _with_container(export)
    typer.echo(f"{count} records", err=True)


@audit_cli.command("purge")
def audit_purge() -> None:
    """Remove the records older than `audit_retention_days` (never below 548 days);
    the chain stays verifiable from the last removed record's hash."""
    settings = _settings()
    removed = _with_container(lambda c: c.audit.purge(settings.audit_retention_days))
    typer.echo(f"removed {removed} records older than {settings.audit_retention_days} days")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    role: Annotated[list[str], typer.Option(help="store, approver, ops or admin (repeatable)")],
    approval_level: Annotated[
        int | None, typer.Option(help="1, 2 or 3; required for approvers")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create a key. The secret is printed once and stored only as a hash."""
    from app.bootstrap import build_container
    from app.domain.errors import DomainError

    settings = _ready_settings()

    async def create() -> tuple[Any, str]:
        container = build_container(settings)
        try:
            return await container.keys.create(name, role, approval_level)
        finally:
            await container.aclose()

    try:
        key, secret = _run(create())
    except DomainError as exc:
        typer.echo(f"pse-refunds: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    roles = sorted(r.value for r in key.roles)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "id": key.id,
                    "name": key.name,
                    "key": secret,
                    "roles": roles,
                    "approval_level": key.approval_level,
                }
            )
        )
    else:
        typer.echo(f"id:    {key.id}\nname:  {key.name}\nroles: {', '.join(roles)}")
        if key.approval_level:
            typer.echo(f"level: {key.approval_level}")
        typer.echo(f"key:   {secret}\n(shown once: store it now)")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_…)")]) -> None:
    """Revoke a key at once."""
    from app.bootstrap import build_container
    from app.domain.errors import DomainError

    settings = _ready_settings()

    async def revoke() -> None:
        container = build_container(settings)
        try:
            await container.keys.revoke(key_id)
        finally:
            await container.aclose()

    try:
        _run(revoke())
    except DomainError as exc:
        typer.echo(f"pse-refunds: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {key_id}")


@keys_cli.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (never their secrets)."""
    from app.bootstrap import build_container

    settings = _ready_settings()

    async def fetch() -> list[Any]:
        container = build_container(settings)
        try:
            return await container.keys.list()
        finally:
            await container.aclose()

    keys = _run(fetch())
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.prefix,
            "roles": sorted(r.value for r in k.roles),
            "approval_level": k.approval_level,
            "revoked": k.revoked_at is not None,
        }
        for k in keys
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        typer.echo(
            f"{row['id']}  {row['prefix']}…  {','.join(row['roles'])}  {state}  {row['name']}"
        )


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()


if __name__ == "__main__":
    main()
