"""Serving the sandbox on its own (`pse-refunds sandbox`)."""

from __future__ import annotations

import uvicorn

from app.sandbox.app import create_sandbox_app
from app.sandbox.config import Faults, SandboxConfig


def run_sandbox(host: str, port: int, config: SandboxConfig, faults: Faults) -> None:
    """Serve until interrupted; uvicorn's lifespan shutdown closes the sandbox."""
    app = create_sandbox_app(config, faults)
    # A request hanging on the timeout-after-commit fault would otherwise hold the
    # shutdown for up to `hang_seconds`.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
