"""Sends approved refunds to their PSE right after their commit, in the background.

The caller gets its answer as soon as the refund is recorded; a PSE that is
slow or down never holds a store's request. Tasks are tracked so shutdown
waits for in-flight PSE calls to finish and be recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("app.dispatch")


class BackgroundSubmitter:
    def __init__(self, submit: Callable[[str], Awaitable[object]]) -> None:
        self._submit = submit
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit_soon(self, refund_id: str) -> None:
        if self._closed:
            return  # the worker picks up approved refunds left behind
        task = asyncio.get_running_loop().create_task(self._run(refund_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, refund_id: str) -> None:
        try:
            await self._submit(refund_id)
        except Exception:
            log.exception("refund.submit_failed", refund_id=refund_id)

    async def drain(self) -> None:
        """Wait for every submission started so far (and those they start)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, grace_seconds: float = 30.0) -> None:
        self._closed = True
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self.drain(), grace_seconds)
        except TimeoutError:
            for task in list(self._tasks):
                task.cancel()
