"""The controller process: background upkeep of containers (``preview-controller``).

A drift-corrected loop: claim the leader lease (several controllers may run; one acts),
then keep the warm pool filled. The reaper builds on this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.containers import ContainerError, Containers
from gateway.docker_runtime import DockerRuntime, DockerRuntimeError
from gateway.health import check_redis
from gateway.leader import LeaderLease
from gateway.logs import configure_logging
from gateway.pool import PoolKeeper
from shared.settings import Settings

log = logging.getLogger(__name__)


async def poll(interval: float) -> AsyncIterator[None]:
    """Yield every `interval` seconds, correcting for the time the loop body took."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while True:
        yield
        deadline += interval
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        deadline = max(deadline, loop.time() - interval)


async def run(settings: Settings, interval: float = 2.0) -> None:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    runtime = DockerRuntime(settings)
    lease = LeaderLease(redis, ttl=max(3 * interval, 10.0))
    keeper = PoolKeeper(Containers(settings, redis, runtime), target=settings.pool_min)
    last_state: tuple[object, ...] | None = None
    leading = False
    try:
        async for _ in poll(interval):
            redis_error = await check_redis(redis)
            hosts = await runtime.reachable()
            state = (redis_error, tuple(sorted(hosts.items(), key=lambda kv: kv[0])))
            if state != last_state:
                down = [name for name, err in hosts.items() if err]
                log.info(
                    "controller health redis=%s docker_down=%s",
                    redis_error or "ok",
                    ",".join(down) or "none",
                )
                last_state = state
            if redis_error:
                continue
            try:
                now_leading = await lease.claim()
                if now_leading != leading:
                    log.info("controller %s leader=%s", lease.id, now_leading)
                    leading = now_leading
                if leading:
                    await keeper.tick()
            except (RedisError, DockerRuntimeError, ContainerError) as exc:
                log.error("controller tick failed: %s", exc)
    finally:
        await keeper.close()
        with contextlib.suppress(RedisError, OSError):
            await lease.release()
        await runtime.close()
        await redis.aclose()


def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings)

    async def serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await run(settings)
        except asyncio.CancelledError:
            log.info("controller stopped")

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
