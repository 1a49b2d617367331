"""The controller process: background upkeep of containers (``preview-controller``).

A drift-corrected loop. Several controllers may run; the one holding the Redis leader
lease acts: each pass it checks the Docker hosts, reaps sessions, keeps the warm pool
and, every PREVIEW_ORPHAN_INTERVAL, sweeps orphans. The others only renew their claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from gateway.containers.containers import ContainerError, Containers
from gateway.containers.docker_runtime import DockerRuntime, DockerRuntimeError
from gateway.controller.hosts import HostMonitor
from gateway.controller.leader import LeaderLease
from gateway.controller.orphans import OrphanSweeper
from gateway.controller.pool import PoolKeeper
from gateway.controller.reaper import Reaper
from gateway.observability.exposure import check_controller
from gateway.observability.logs import configure_logging
from gateway.observability.ops import ControllerOps
from gateway.observability.sentry_setup import init_sentry
from gateway.sessions.endings import Endings
from gateway.sessions.previews import Previews
from shared.periodic import ticks
from shared.redis_client import redis_client, unreachable
from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Longest a command's acknowledgement is waited for here (a container's reset), plus a
# margin: the client used for BLPOP must not time out before Redis answers.
BLOCKING_SOCKET_TIMEOUT = 90.0
SHUTDOWN_DEADLINE = 10.0
STEP_ERRORS = (RedisError, DockerRuntimeError, ContainerError, OSError)


def check_settings(settings: Settings) -> None:
    if settings.controller_interval <= 0:
        raise SettingsError("PREVIEW_CONTROLLER_INTERVAL must be positive")
    if settings.leader_ttl < 2 * settings.controller_interval:
        raise SettingsError("PREVIEW_LEADER_TTL must be at least twice the controller interval")
    if settings.controller_interval >= settings.heartbeat_ttl:
        # A dead container must be noticed within 2 x TTL of its last heartbeat.
        raise SettingsError("PREVIEW_CONTROLLER_INTERVAL must be shorter than the heartbeat TTL")
    if settings.host_create_concurrency < 1:
        raise SettingsError("PREVIEW_HOST_CREATE_CONCURRENCY must be at least 1")


def _stop_if_cancelled(where: str) -> None:
    """Re-raise a cancellation that a library swallowed (the request is still counted
    on the task): without this the controller would not stop on SIGTERM."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() and not _unwinding():
        log.warning("a cancellation was swallowed in the %s step; stopping anyway", where)
        raise asyncio.CancelledError


def _unwinding() -> bool:
    return sys.exc_info()[0] is not None


class Controller:
    """Everything the controller does, on clients it is given (tests build one in-process)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        blocking_redis: Redis,
        runtime: DockerRuntime,
        labels: Mapping[str, str] | None = None,
        ops: ControllerOps | None = None,
    ) -> None:
        check_settings(settings)
        self.ops = ops  # observability (records, costs, alerts, /metrics); None in tests
        self.settings = settings
        self.redis = redis
        self.runtime = runtime
        self.background = Background()
        self.containers = Containers(
            settings, blocking_redis, runtime, labels=labels, background=self.background
        )
        records = ops.records if ops is not None else None
        self.previews = Previews(settings, redis, self.containers, self.background, records)
        self.endings = Endings(redis, self.containers, self.previews)
        self.reaper = Reaper(settings, redis, self.containers, self.previews, self.endings)
        self.keeper = PoolKeeper(self.containers, outage=self.reaper.outage)
        self.orphans = OrphanSweeper(redis, self.containers, self.endings)
        self.hosts = HostMonitor(settings, redis, self.containers, self.endings, self._rejoined)
        self.lease = LeaderLease(redis, settings.leader_ttl)
        self._swept = 0.0
        self._sweep: asyncio.Task[object] | None = None
        self._failing: set[str] = set()

    async def _rejoined(self, host: str) -> None:
        self.background.spawn(self.orphans.sweep([host]), f"orphan sweep {host}")

    async def tick(self) -> None:
        """One pass, if we lead. Each step fails on its own: a Docker host timing out
        must not stop the reaper."""
        if not self.lease.leading:
            return
        await self._step("hosts", self.hosts.check())
        await self._step("reaper", self.reaper.tick())
        await self._step("pool", self.keeper.tick())
        if self.ops is not None:
            await self._step("observability", self.ops.tick())
        sweeping = self._sweep is not None and not self._sweep.done()
        if not sweeping and time.monotonic() - self._swept >= self.settings.orphan_interval:
            # In the background: listing every container of every host takes a while.
            self._swept = time.monotonic()
            self._sweep = self.background.spawn(
                self._step("orphans", self.orphans.sweep()), "orphan sweep"
            )

    async def _step(self, name: str, work: Awaitable[object]) -> None:
        try:
            await work
        except STEP_ERRORS as exc:
            if name not in self._failing:
                log.error("controller %s step failed: %s", name, exc)
            self._failing.add(name)
            return
        finally:
            _stop_if_cancelled(name)
        if name in self._failing:
            log.info("controller %s step recovered", name)
            self._failing.discard(name)

    async def run(self) -> None:
        """Lead when we can and act every interval, until cancelled."""
        self.background.forever(self.lease.keep(), "leader lease")  # cancelled by close
        redis_down: str | None = None
        if self.ops is not None:
            await self.ops.start()
        try:
            async for _ in ticks(self.settings.controller_interval, first_now=True):
                error = await unreachable(self.redis)
                if error != redis_down:
                    log.log(
                        logging.ERROR if error else logging.INFO,
                        "controller redis=%s",
                        error or "ok",
                    )
                    redis_down = error
                if self.ops is not None:
                    await self._step("observability", self.ops.redis_state(error))
                if error is None:
                    await self.tick()
        finally:
            await self.close()

    async def close(self) -> None:
        await self.keeper.close()
        await self.background.close(SHUTDOWN_DEADLINE)
        if self.ops is not None:
            await self.ops.close()
        with contextlib.suppress(RedisError, OSError):
            await self.lease.release()


async def run(settings: Settings) -> None:
    redis = redis_client(settings, socket_connect_timeout=2, socket_timeout=5)
    blocking = redis_client(
        settings, socket_connect_timeout=2, socket_timeout=BLOCKING_SOCKET_TIMEOUT
    )
    runtime = DockerRuntime(settings)
    try:
        await Controller(
            settings, redis, blocking, runtime, ops=ControllerOps(settings, redis)
        ).run()
    finally:
        await runtime.close()
        await blocking.aclose()
        await redis.aclose()


def main() -> int:
    try:
        settings = Settings.from_env()
        check_settings(settings)
        # The deployment's secrets, refused here too when it reaches beyond this machine
        # (gateway/observability/exposure.py says why the controller checks what it does not use).
        check_controller(settings)
    except SettingsError as exc:
        print(f"preview-controller: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    init_sentry(settings, "controller", starlette=False)

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
