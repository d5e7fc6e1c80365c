"""`serve` and `worker`: one lifecycle for both.

The settings (the configuration, or the embedded demo's when there is none),
the database (the embedded PostgreSQL started or joined, and migrated; a
configured one used as it is), a refusal to start on a database that is
unreachable or not at head, the container, signals, and on the way out the
embedded server let go of, whatever ended the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.database import build, database, require_schema, shown_database
from app.cli.demo import base_url, demo_keys, demo_settings, print_demo_banner, shown_path
from app.cli.options import ConfigOption, fail
from app.cli.settings import (
    config_file,
    configure_command_logging,
    configured_settings,
    is_demo,
)
from app.config import ENV_PREFIX, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from app.sandbox.config import SandboxConfig

# The app each process of `serve --workers N` builds for itself.
SERVED_APP = "app.cli.serve:app_from_environment"
DATABASE_URL_VAR = f"{ENV_PREFIX}DATABASE_URL"
# How `serve` runs uvicorn, with one process or several.
_UVICORN: dict[str, Any] = {
    "factory": True,
    "log_level": "warning",
    "access_log": False,
    "lifespan": "on",
    "timeout_graceful_shutdown": 30,
}


class _Terminated(Exception):
    """SIGTERM, raised where the command is, so that it unwinds as on Ctrl-C."""


@dataclass
class Service:
    settings: Settings  # with the database to use
    demo: bool
    embedded: bool  # on the embedded PostgreSQL, which this process holds
    sandbox: SandboxConfig | None = None  # the demo's PSE, served by this process


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and Ctrl-C end the command through every `finally` on the way
    out, the one letting go of the embedded server included, and with exit 0:
    the service stopped as it was asked to. uvicorn and the worker take the
    signals over while they run; uvicorn sends the one it got again once it has
    shut down, and that ends the command here."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def terminated(_signum: int, _frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except (_Terminated, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running_service(
    config: ConfigOption,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    processes: int | None = None,
    serving: bool = False,
) -> Iterator[Service]:
    """The lifecycle `serve` and `worker` share, up to the moment they run.
    `serving`: for `serve`, which listens on `port` (and on `metrics_port`)."""
    with _stop_on_signals(), config_file(config):
        demo = is_demo()
        if demo and processes is not None and processes > 1:
            fail(
                f"--workers {processes}: the embedded demo runs in one process "
                "(its sandbox PSE lives in that process); configure the service "
                "(a pse-refunds.toml) to run several"
            )
        sandbox = None
        if demo:
            settings, sandbox = demo_settings(host, port)
        else:
            settings = configured_settings()
        if serving and settings.metrics_port == port:
            fail(
                f"metrics_port: {port} is the port serve listens on (--port); the metrics "
                "listener needs a port of its own"
            )
        configure_command_logging(settings)
        with database(settings) as ready:
            asyncio.run(_preflight(ready))
            yield Service(ready, demo, settings.uses_embedded_database, sandbox)


async def _preflight(settings: Settings) -> None:
    """Refuse here, once, what would stop or cripple every process: an adapter
    refusing its account's settings, a database unreachable or not at head."""
    container = build(settings)
    try:
        await require_schema(container)
    finally:
        await container.aclose()


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            show_default=False,
            help="API processes sharing the port (default: server.workers of the "
            "configuration, else 1)",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the HTTP API and, unless `[worker] enabled = false`, the background worker.

    With no configuration at all (no config file, no PSE_REFUNDS_ variables)
    it starts the embedded demo: an embedded PostgreSQL in ./.pse-refunds/, a
    `sandbox` PSE account served by this same process, and one demo key per
    role printed below.

    Without a `database_url` it uses the embedded PostgreSQL, migrated first;
    a configured database must be at head (`pse-refunds migrate`), or `serve`
    refuses to start. Stopping `serve` stops the embedded PostgreSQL unless
    another command still uses it.

    With `--workers N` (N > 1) it runs N processes on the port, each with its
    own background worker.

    `/metrics` is not served unless `metrics_token` (scrapes carry it as a
    bearer token) or `metrics_port` (a listener of its own, on --host) is set.
    """
    with running_service(config, host=host, port=port, processes=workers, serving=True) as service:
        settings = service.settings
        processes = workers if workers is not None else settings.server.workers
        if service.demo:
            keys = asyncio.run(demo_keys(settings))
            print_demo_banner(host, port, settings.embedded_data_dir, keys, settings.metrics_token)
        else:
            _print_listening(service, host, port, processes)
        if processes > 1:
            _serve_processes(service, host, port, processes)
            return

        def factory() -> Any:
            from app.api.app import create_app

            try:
                container = build(settings)
            except typer.Exit as exit_:
                sys.exit(exit_.exit_code)
            mounts = {}
            if service.sandbox is not None:
                from app.sandbox.app import create_sandbox_app

                mounts["/sandbox"] = create_sandbox_app(service.sandbox)
            app = create_app(container, extra_mounts=mounts, run_worker=True)
            collect_less()
            return app

        _run_uvicorn(factory, settings, host=host, port=port)


# The youngest generation is collected after this many new objects rather than
# Python's 700. A request or a webhook allocates a few thousand, nearly all
# freed by reference counting at once; a reference cycle is rare.
YOUNG_COLLECTION_THRESHOLD = 10_000


def collect_less() -> None:
    """Garbage collection for a process of `serve` or `worker`, once built.

    What start-up made (modules, settings, the app and its container) is
    collected once and then frozen out of the collector's scans. Otherwise,
    each full collection would walk it again. The youngest generation is
    collected less often, and the older ones in proportion. Measured on refund
    creation and webhooks: collections went from about 190 to 45 µs of CPU per
    refund, 4-5 % of the process's CPU (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 50, 100)


def _run_uvicorn(
    app: Any, settings: Settings, *, host: str, port: int, workers: int | None = None
) -> None:
    """uvicorn on `port`, and with `metrics_port` set on that port too: both
    sockets bound here and served by the same server, or by each of the
    `--workers` processes, which accept on both as they do on the port. A scrape
    of the metrics port reaches any process and, like any request there, is
    told apart by the port it came in on (app.api.metrics_access); each
    process merges the metrics of all."""
    import uvicorn

    from app.api.protocol import uvicorn_options

    options = {
        **_UVICORN,
        **uvicorn_options(settings.server),
        **({"workers": workers} if workers is not None else {}),
    }
    if settings.metrics_port is None:
        uvicorn.run(app, host=host, port=port, **options)
        return

    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    uvicorn_config = uvicorn.Config(app, host=host, port=port, **options)
    sockets = [metrics_socket(host, settings.metrics_port)]
    sockets.append(uvicorn_config.bind_socket())
    server = uvicorn.Server(uvicorn_config)
    try:
        if uvicorn_config.workers > 1:
            Multiprocess(uvicorn_config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    if uvicorn_config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run: the app did not start


def metrics_socket(host: str, port: int) -> socket.socket:
    """The metrics listener's socket, on the interface of --host, as uvicorn binds its own."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"metrics_port: cannot listen on {host}:{port}: {exc.strerror or exc}", code=1)
    sock.set_inheritable(True)
    return sock


def _print_listening(service: Service, host: str, port: int, processes: int) -> None:
    url = base_url(host, port)
    where = f"{url} (all interfaces)" if host in ("0.0.0.0", "::", "") else url  # noqa: S104
    settings = service.settings
    database_line = (
        f"embedded PostgreSQL in {shown_path(settings.embedded_data_dir)}"
        if service.embedded
        else shown_database(settings)
    )
    count = f", {processes} processes" if processes > 1 else ""
    typer.echo(
        "\n".join(
            [
                f"PSE Refund Service{count}",
                f"  Listening: {where}",
                f"  API docs:  {url}/docs",
                f"  Console:   {url}/console",
                f"  Metrics:   {_metrics_line(settings, host, port)}",
                f"  Database:  {database_line}",
            ]
        )
    )


def _metrics_line(settings: Settings, host: str, port: int) -> str:
    token = " (Authorization: Bearer <metrics_token>)" if settings.metrics_token else ""
    if settings.metrics_port is not None:
        return f"{base_url(host, settings.metrics_port)}/metrics{token}"
    if token:
        return f"{base_url(host, port)}/metrics{token}"
    return "not served (set metrics_token or metrics_port)"


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _serve_processes(service: Service, host: str, port: int, processes: int) -> None:
    """`processes` uvicorn workers on one socket, each building its app with
    `app_from_environment`, their metrics merged through a fresh directory that
    lives as long as this command. They read the configuration themselves, and
    are told the embedded server's URL, which this process holds for them."""
    from app.metrics import MULTIPROC_DIR_VAR

    metrics_dir = tempfile.mkdtemp(prefix="pse-refunds-metrics-")
    told = {MULTIPROC_DIR_VAR: metrics_dir}
    if service.embedded and service.settings.database_url is not None:
        told[DATABASE_URL_VAR] = service.settings.database_url
    try:
        with _environment(**told):
            _run_uvicorn(SERVED_APP, service.settings, host=host, port=port, workers=processes)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_environment() -> Any:
    """The app of one process of `serve --workers N`: settings from the same
    sources as the command's (the file named by PSE_REFUNDS_CONFIG_FILE or
    ./pse-refunds.toml, PSE_REFUNDS_ variables), its own background worker and
    audit flusher, and metrics shared through PROMETHEUS_MULTIPROC_DIR."""
    from uvicorn.config import STARTUP_FAILURE

    from app.api.app import create_app
    from app.bootstrap import build_container
    from app.metrics import MULTIPROC_DIR_VAR, Metrics

    try:
        settings = load_settings()
        configure_command_logging(settings)
        metrics = Metrics(multiprocess_dir=os.environ.get(MULTIPROC_DIR_VAR))
        container = build_container(settings, metrics=metrics)
    except ConfigError as exc:
        typer.echo(f"pse-refunds: {exc}", err=True)
        # Not restarted by the supervising process: it would fail the same way.
        sys.exit(STARTUP_FAILURE)
    app = create_app(container, run_worker=True)
    collect_less()
    return app


def worker(config: ConfigOption = None) -> None:
    """Run the background worker alone (no HTTP): resolves unknown, stale pending,
    orphaned submitting and never-sent approved refunds. Stops cleanly on SIGTERM.

    It refuses to start on a database that is not at head (`pse-refunds migrate`)."""
    with running_service(config) as service:
        asyncio.run(_run_worker(service.settings))


async def _run_worker(settings: Settings) -> None:
    container = build(settings)
    collect_less()
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
