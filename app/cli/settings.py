"""The settings a command runs with: the configuration, or with none at all
the embedded demo's, so that every command of a machine running the demo sees
its database and its accounts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from app.cli.demo import demo_settings
from app.cli.options import fail
from app.config import (
    CONFIG_FILE_VAR,
    ConfigError,
    Settings,
    has_any_configuration,
    load_settings,
)


@contextlib.contextmanager
def config_file(path: Path | None) -> Iterator[None]:
    """`--config FILE`: the file that PSE_REFUNDS_CONFIG_FILE names, for the
    command and the processes it starts (the API processes of `serve --workers`
    read their configuration themselves)."""
    if path is None:
        yield
        return
    if not path.is_file():
        fail(f"invalid configuration: {path}: no such file (named by --config)")
    previous = os.environ.get(CONFIG_FILE_VAR)
    os.environ[CONFIG_FILE_VAR] = str(path.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CONFIG_FILE_VAR, None)
        else:
            os.environ[CONFIG_FILE_VAR] = previous


def is_demo() -> bool:
    """True when there is no configuration at all."""
    try:
        return not has_any_configuration()
    except ConfigError as exc:  # PSE_REFUNDS_CONFIG_FILE names no file
        fail(str(exc))


def command_settings() -> Settings:
    """The configuration, or the demo's when there is none."""
    if is_demo():
        return demo_settings()[0]
    return configured_settings()


def configured_settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def configure_command_logging(settings: Settings) -> None:
    """structlog to stderr, every line redacted of the configuration's secrets."""
    from app.config import secrets_of
    from app.logs import configure_logging
    from app.redaction import Redactor

    configure_logging(settings.log_format, settings.log_level, Redactor(secrets_of(settings)))
