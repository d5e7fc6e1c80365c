"""The sandbox's own tests run against a sandbox in-process: the harness's
fixtures (`receiver`, `config`, `sandbox`, `client`)."""

from __future__ import annotations

from tests.sandbox.harness import client, config, receiver, sandbox

__all__ = ["client", "config", "receiver", "sandbox"]
