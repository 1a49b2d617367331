"""The log snapshot in Redis follows the buffer: written soon after lines arrive (also
from a worker thread), a burst ending in its last line, and never while nothing changes:
a quiet or frozen dev server's supervisor is not woken by a timer for it."""

from __future__ import annotations

import asyncio
import threading

from redis.asyncio import Redis

from shared import keys
from supervisor.logbuffer import LogBuffer, publish_snapshots
from tests.utils import async_wait_until

INTERVAL = 0.3


async def test_snapshots_follow_the_lines_and_nothing_else(redis: Redis) -> None:
    buffer = LogBuffer()
    task = asyncio.create_task(publish_snapshots(redis, "pvc-logs", buffer, INTERVAL))
    try:
        await asyncio.sleep(INTERVAL * 3)  # a measurement window: nothing to write
        assert await redis.get(keys.logs("pvc-logs")) is None
        buffer.append("first line")

        async def written(text: str) -> bool:
            found = await redis.get(keys.logs("pvc-logs"))
            return found is not None and text in found.decode()

        await async_wait_until(lambda: written("first line"), 5, "the first snapshot")
        # From a worker thread (installs report through to_thread): still seen.
        thread = threading.Thread(target=buffer.append, args=("from a thread",))
        thread.start()
        thread.join()
        await async_wait_until(lambda: written("from a thread"), 5, "the thread's line")
        # A burst is one write per interval, the last line in it.
        await redis.delete(keys.logs("pvc-logs"))
        for n in range(200):
            buffer.append(f"burst {n}")
        await async_wait_until(lambda: written("burst 199"), 5, "the burst's snapshot")
        assert 0 < await redis.ttl(keys.logs("pvc-logs")) <= keys.LOGS_TTL
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert buffer.on_change is None  # the buffer does not call into a stopped publisher
