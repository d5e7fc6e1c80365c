"""In-process background jobs (reconciliations of uploaded files), tracked so
shutdown waits for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("app.jobs")


class BackgroundJobs:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, name: str, job: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            try:
                await job()
            except Exception:
                log.exception("job.failed", job=name)

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, grace_seconds: float = 60.0) -> None:
        try:
            await asyncio.wait_for(self.drain(), grace_seconds)
        except TimeoutError:
            for task in list(self._tasks):
                task.cancel()
