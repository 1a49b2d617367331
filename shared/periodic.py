"""Drift-corrected periodic ticks, the one loop timer of every daemon loop (the
controller's pass, the gateway's session tracker, the supervisor's heartbeat and log
snapshot), like arq's ``poll``: each tick is due one interval after the previous one was
due, however long the work in between took; a tick missed while the process was stalled
(a paused container, a long GC, a slow pass) is skipped, not made up in a burst.

A loop stops at its next tick once its task was cancelled, even when the work in between
swallowed the CancelledError (a broad ``except``, or a call that turned it into an error
the loop logs and goes on from). A gateway worker stopped just after it started showed
it: its session tracker and upkeep loops ran on in state "cancelling", and its shutdown
waited for them forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable


def next_due(due: float, now: float, interval: float) -> float:
    """When the tick after the one due at `due` is due, at clock time `now`: one interval
    later, or, when that is already past, the first tick of the same grid after `now`."""
    due += interval
    if due < now:
        due = now + interval - ((now - due) % interval)
    return due


async def ticks(
    interval: float,
    first_now: bool = False,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[None]:
    """Yield every `interval` seconds (the first time at once when `first_now`).
    `clock`/`sleep` default to the event loop's (tests pass a fake clock)."""
    now = clock or asyncio.get_running_loop().time
    due = now() + (0 if first_now else interval)
    while True:
        _stop_if_cancelled()
        delay = due - now()
        if delay > 0:
            await sleep(delay)
        yield
        due = next_due(due, now(), interval)


def _stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop and that was swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
