"""Blocking cache work (packing, restoring, trimming) off the supervisor's event loop: in
a thread of its own, and cancelled only once that thread has stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any, nice: int = 0) -> T:
    """``function(*args)`` in a thread of its own (not the shared pool: a packer lowers
    its own priority, and that must not stick to a thread a restore uses next)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            if nice:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            result = function(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name=getattr(function, "__name__", "cache"), daemon=True).start()
    return await future


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


async def cancellable(stop: threading.Event, work: Coroutine[Any, Any, T]) -> T:
    """Await thread work; when cancelled, tell it to stop and wait until it has (so that a
    cancelled restore cannot rename node_modules into place afterwards)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await task
        raise
