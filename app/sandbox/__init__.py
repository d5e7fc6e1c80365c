"""The sandbox PSE: a small payment service entity of our own for local runs,
demos and chaos tests (see DESIGN.md, "The sandbox PSE")."""

from app.sandbox.app import create_sandbox_app
from app.sandbox.config import Faults, SandboxConfig, new_webhook_secret
from app.sandbox.server import run_sandbox
from app.sandbox.state import SandboxState

__all__ = [
    "Faults",
    "SandboxConfig",
    "SandboxState",
    "create_sandbox_app",
    "new_webhook_secret",
    "run_sandbox",
]
