"""The heartbeat: every interval a ``Heartbeat`` goes to a key with a TTL (gone when we
are) and to a capped stream for history, in one transaction."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from shared import keys
from shared.messages import Heartbeat
from supervisor.cgroup import CpuMeter, disk_total, tree_size
from supervisor.context import Context
from supervisor.ticker import ticks

log = logging.getLogger(__name__)

# Walking node_modules costs tens of milliseconds per 10k files: not every beat, and not
# after every editor save either.
DISK_REFRESH = 60.0
DISK_REFRESH_CHANGED = 10.0
HISTORY_FIELD = "heartbeat"  # field of each heartbeat_history entry (Heartbeat JSON)


class DiskMeter:
    def __init__(self) -> None:
        self.used = 0
        self._measured = -DISK_REFRESH

    async def read(self, ctx: Context) -> int:
        now = time.monotonic()
        due = DISK_REFRESH_CHANGED if ctx.disk_dirty else DISK_REFRESH
        if now - self._measured >= due:
            ctx.disk_dirty = False
            self._measured = now
            self.used = await asyncio.to_thread(tree_size, ctx.config.workspace)
        return self.used


def sample(ctx: Context, cpu: CpuMeter, disk_used: int) -> Heartbeat:
    cg = ctx.cgroup.sample()
    now = time.time()
    dev = ctx.devserver
    return Heartbeat(
        container_id=ctx.config.container_id,
        ts=now,
        session_id=ctx.session.session_id,
        state=dev.state,
        cpu_percent=cpu.update(cg.cpu_usage_ns, time.monotonic()),
        memory_used=cg.memory_used,
        memory_limit=cg.memory_limit,
        disk_used=disk_used,
        disk_total=disk_total(ctx.config.workspace),
        pid=dev.pid,
        port=dev.port,
        restarts=dev.restarts,
        last_error=dev.last_error,
        project_id=ctx.session.project_id,
        node_modules_key=ctx.session.node_modules_key,
    )


async def publish(ctx: Context, heartbeat: Heartbeat) -> None:
    cid = ctx.config.container_id
    payload = heartbeat.to_json()
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.heartbeat(cid), payload, px=int(ctx.config.heartbeat_ttl * 1000))
        pipe.xadd(
            keys.heartbeat_history(cid),
            {HISTORY_FIELD: payload},
            maxlen=keys.HEARTBEAT_HISTORY_LEN,
            approximate=True,
        )
        await pipe.execute()


async def run(ctx: Context) -> None:
    """Beat until cancelled; a Redis outage is logged once and then waited out."""
    cpu, disk = CpuMeter(), DiskMeter()
    failing = False
    async for _ in ticks(ctx.config.heartbeat_interval, first_now=True):
        try:
            await publish(ctx, sample(ctx, cpu, await disk.read(ctx)))
        except (RedisError, OSError) as exc:
            if not failing:
                log.warning("heartbeat not written: %s", exc)
            failing = True
            continue
        if failing:
            log.info("heartbeat written again")
        failing = False


async def clear(ctx: Context) -> None:
    """Delete the heartbeat key: we are going away on purpose."""
    await ctx.redis.delete(keys.heartbeat(ctx.config.container_id))
