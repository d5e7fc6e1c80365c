"""The sandbox PSE: a small payment service entity of our own for local runs,
demos and chaos tests (see DESIGN.md, "The sandbox PSE").

Its names are imported when first used: the CLI reads the sandbox's
configuration for every command, and its web app (FastAPI) is needed only
to serve it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.sandbox.app import create_sandbox_app
    from app.sandbox.config import Faults, SandboxConfig, new_webhook_secret
    from app.sandbox.server import run_sandbox
    from app.sandbox.state import SandboxState

_MODULES = {
    "Faults": "app.sandbox.config",
    "SandboxConfig": "app.sandbox.config",
    "new_webhook_secret": "app.sandbox.config",
    "SandboxState": "app.sandbox.state",
    "create_sandbox_app": "app.sandbox.app",
    "run_sandbox": "app.sandbox.server",
}

__all__ = [
    "Faults",
    "SandboxConfig",
    "SandboxState",
    "create_sandbox_app",
    "new_webhook_secret",
    "run_sandbox",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
