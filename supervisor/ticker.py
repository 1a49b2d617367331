"""Drift-corrected periodic ticks for daemon loops (arq's ``poll``): each tick is due one
interval after the previous one was due, however long the work in between took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator


async def ticks(interval: float, first_now: bool = False) -> AsyncIterator[float]:
    """Yield the loop time at each tick; a late tick is not followed by a burst."""
    loop = asyncio.get_running_loop()
    due = loop.time() + (0 if first_now else interval)
    while True:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield time.time()
        due += interval
        now = loop.time()
        if due < now:
            # Fell behind (a suspended container, a long GC): skip missed ticks.
            due = now + interval - ((now - due) % interval)
