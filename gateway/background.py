"""Every task a gateway or controller runs beside its requests or passes: fire-and-forget
work that must still finish or be cancelled cleanly at shutdown, and loops that run until
shutdown. One owner per process (the lifespan, the controller), closed last."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Background:
    """Strong references to background tasks (dropped when done); `close` cancels the
    loops, waits for the other tasks with a deadline, then cancels what is left and
    awaits it."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loops: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Work that ends by itself: waited for at `close`, up to its deadline."""
        return self._keep(self.tasks, coro, name)

    def forever(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A loop that runs until cancelled: cancelled first at `close`, not waited for."""
        return self._keep(self.loops, coro, name)

    def _keep(
        self, where: set[asyncio.Task[Any]], coro: Coroutine[Any, Any, Any], name: str
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        where.add(task)
        task.add_done_callback(where.discard)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self, deadline: float) -> None:
        loops = set(self.loops)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d background tasks at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
