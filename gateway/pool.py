"""Warm pool upkeep, run by the leading controller: keep enough idle containers ready.

Acquiring is the gateway's job (`Containers.acquire`, one Lua script). Here: count what
is pooled or warming for the current image, launch what is missing (a few at a time),
put containers in the pool once their supervisor reports `idle`, and drop pooled
containers that stopped heartbeating or belong to an older image.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.containers import ContainerError, Containers
from gateway.docker_runtime import DockerRuntimeError
from shared import keys
from shared.redis_types import text

log = logging.getLogger(__name__)

CREATE_CONCURRENCY = 3  # container creations at once per controller


class PoolKeeper:
    def __init__(self, containers: Containers, target: int) -> None:
        self.containers = containers
        self.target = target
        self.pending = 0  # launches under way, counted before their container exists
        self._tasks: set[asyncio.Task[None]] = set()
        self._create = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def tick(self) -> None:
        """One upkeep pass: prune the dead and the outdated, then refill."""
        redis = self.containers.redis
        image_id = await self.containers.image_id()
        await self._prune(image_id)
        pooled = int(await redis.llen(keys.pool(image_id)))
        missing = self.target - pooled - self.pending
        if missing > 0:
            log.info(
                "pool refill image=%s pooled=%d warming=%d launching=%d",
                image_id[7:19],
                pooled,
                self.pending,
                missing,
            )
        for _ in range(max(0, missing)):
            self.pending += 1
            task = asyncio.create_task(self._warm_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _prune(self, image_id: str) -> None:
        redis = self.containers.redis
        async for key in redis.scan_iter(match=keys.pool("*"), count=100):
            pool_image = text(key).removeprefix(keys.pool(""))
            for raw in await redis.lrange(key, 0, -1):
                cid = text(raw)
                if pool_image != image_id:
                    reason = "image was rebuilt"
                elif not await redis.exists(keys.heartbeat(cid)):
                    reason = "pooled container stopped heartbeating"
                else:
                    continue
                if await redis.lrem(key, 1, cid):
                    await self.containers.destroy(cid, reason)

    async def _warm_one(self) -> None:
        try:
            async with self._create:
                info = await self.containers.launch()
            try:
                await self.containers.wait_idle(info.cid, timeout=120)
            except ContainerError as exc:
                log.error("pool container never became idle: %s", exc)
                await self.containers.destroy(info.cid, "never became idle")
                return
            await self.containers.add_to_pool(info.cid)
        except (DockerRuntimeError, ContainerError) as exc:
            log.error("pool launch failed: %s", exc)
        finally:
            self.pending -= 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
