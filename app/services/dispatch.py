"""Sends approved refunds to their PSE right after their commit, in the background.

The caller gets its answer as soon as the refund is recorded; a PSE that is
slow or down never holds a store's request. Tasks are tracked so shutdown
waits for in-flight PSE calls to finish and be recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from app.domain.models import Payment, Refund

log = structlog.get_logger("app.dispatch")


class BackgroundSubmitter:
    """`submit_soon` sends an `approved` refund (it marks it `submitting`
    first); `send_soon` calls the PSE for one whose `submitting` is already
    committed (a refund approved at its creation: see `SubmissionQueue`)."""

    def __init__(
        self,
        submit: Callable[[str], Awaitable[object]],
        send: Callable[[Payment, Refund], Awaitable[object]],
    ) -> None:
        self._submit = submit
        self._send = send
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def sends_at_once(self) -> bool:
        return not self._closed

    def submit_soon(self, refund_id: str) -> None:
        if self._closed:
            return  # the worker picks up approved refunds left behind
        self._start(self._submit(refund_id), refund_id)

    def send_soon(self, payment: Payment, refund: Refund) -> None:
        if self._closed:
            return  # an orphaned `submitting`: resolution looks it up
        self._start(self._send(payment, refund), refund.id)

    def _start(self, call: Awaitable[object], refund_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(call, refund_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: Awaitable[object], refund_id: str) -> None:
        try:
            await call
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
