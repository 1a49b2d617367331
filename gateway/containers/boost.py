"""Startup CPU boost: more CPU while a preview prepares and starts its dev server.

As Cloud Run's startup CPU boost: a container just handed to a start gets
PREVIEW_START_CPUS instead of PREVIEW_CONTAINER_CPUS (a live ``docker update``, no
restart) and drops back once its preview is ready or failed (the session tracker sees
that within a second), when it is released, or at the latest after
PREVIEW_START_BOOST_SECONDS (the sweep): user code cannot keep it by never becoming
ready.

The extra CPUs come out of the host's free CPU: its cores times
PREVIEW_HOST_CPU_OVERCOMMIT, less the limit of every container that can use CPU and every
boost under way (``keys.host_boosts``, checked and granted in one Lua script, so
concurrent starts from several gateways share what is free rather than each taking it
all). Containers that wait idle do not count: pooled ones (a supervisor waiting for its
first command), reserved ones (reset, dev server gone) and sleeping previews (dev server
frozen). A host full of those has its cores free, and counting their limits left most
starts unboosted on a small host. Many starts at once each get less, down to none. A
boost never exceeds the host's cores (the engine refuses that). Placement sorts hosts by
free CPU net of boosts (placement.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from gateway.containers.docker_runtime import DockerRuntime, DockerRuntimeError
from gateway.containers.placement import Placement
from shared import keys
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

UPDATE_TIMEOUT = 5.0  # seconds a docker update may take before the start goes on without
MIN_EXTRA = 0.1  # CPUs: a smaller boost is not worth a Docker call

# Container records in these states wait idle (their limits are not CPU in use).
IDLE_CONTAINERS = frozenset({"pooled", "reserved"})

# KEYS: host's boosts. ARGV: cid, wanted extra CPUs, host CPU budget, CPUs the host's
# busy containers may use, expiry, smallest boost worth it. -> the extra CPUs granted (a
# string), "0" for none.
_GRANT = """
local used = tonumber(ARGV[4])
local boosts = redis.call('HGETALL', KEYS[1])
for i = 1, #boosts, 2 do
  if boosts[i] ~= ARGV[1] then
    used = used + tonumber(string.match(boosts[i + 1], '^[^|]+'))
  end
end
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[3]) - used)
if grant < tonumber(ARGV[6]) then return '0' end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.2f', grant) .. '|' .. ARGV[5])
return string.format('%.2f', grant)
"""


def parse(raw: str) -> tuple[float, float]:
    """(extra CPUs, expiry) of a ``keys.host_boosts`` value."""
    extra, _, expiry = raw.partition("|")
    return float(extra), float(expiry or 0)


async def busy_containers(redis: Redis, host: str, starting: str) -> int:
    """How many of ``host``'s containers can use CPU now: ``starting`` and every other one
    that is neither pooled, reserved, nor running a sleeping preview (two round trips). A
    container whose record is missing counts as busy."""
    members = await redis.smembers(keys.host_containers(host))
    others = [cid for cid in map(text, members) if cid != starting]
    async with redis.pipeline(transaction=False) as pipe:
        for cid in others:
            pipe.hmget(keys.container(cid), "state", "session")
        found = [(text(state), text(sid)) for state, sid in await pipe.execute()]
    assigned = [sid for state, sid in found if state not in IDLE_CONTAINERS and sid]
    async with redis.pipeline(transaction=False) as pipe:
        for sid in assigned:
            pipe.hget(keys.session(sid), "state")
        asleep = sum(text(state) == "sleeping" for state in await pipe.execute())
    idle = sum(state in IDLE_CONTAINERS for state, _ in found)
    return 1 + len(others) - idle - asleep


async def boosted_cpus(redis: Redis, host: str) -> float:
    """Extra CPUs granted on ``host`` right now."""
    found = record(await redis.hgetall(keys.host_boosts(host)))
    return sum(parse(v)[0] for v in found.values())


class Boost:
    def __init__(
        self, settings: Settings, redis: Redis, runtime: DockerRuntime, placement: Placement
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.runtime = runtime
        self.placement = placement
        self._grant = redis.register_script(_GRANT)

    @property
    def enabled(self) -> bool:
        return self.settings.start_cpus > self.settings.container_cpus

    async def grant(self, host: str, cid: str) -> float:
        """Raise ``cid``'s CPU limit for its start; the extra CPUs given (0: none). Never
        raises: a start goes on unboosted rather than fail for it."""
        if not self.enabled:
            return 0.0
        s = self.settings
        try:
            cores = await self.placement.host_cpus(host)
            if cores <= 0:
                return 0.0
            want = min(s.start_cpus, float(cores)) - s.container_cpus
            busy = await busy_containers(self.redis, host, cid)
            extra = float(
                await self._grant(
                    keys=[keys.host_boosts(host)],
                    args=[
                        cid,
                        repr(want),
                        repr(cores * s.host_cpu_overcommit),
                        repr(busy * s.container_cpus),
                        repr(time.time() + s.start_boost_seconds),
                        repr(MIN_EXTRA),
                    ],
                )
            )
            if extra <= 0:
                return 0.0
            async with asyncio.timeout(UPDATE_TIMEOUT):
                found = await self.runtime.get(host).set_cpus(cid, s.container_cpus + extra)
            if not found:
                await self.redis.hdel(keys.host_boosts(host), cid)
                return 0.0
        except (DockerRuntimeError, TimeoutError, OSError) as exc:
            # Recorded or not, the sweep puts the limit back once the boost expires.
            log.warning("no startup CPU boost for %s: %s", cid, exc)
            return 0.0
        log.info("startup CPU boost cid=%s host=%s cpus=%.2f", cid, host, s.container_cpus + extra)
        return extra

    async def drop(self, host: str, cid: str) -> None:
        """Put ``cid`` back to PREVIEW_CONTAINER_CPUS if it is boosted. The record goes only
        once the engine took the change (or the container is gone): otherwise the sweep
        tries again."""
        if not await self.redis.hexists(keys.host_boosts(host), cid):
            return
        try:
            await self.runtime.get(host).set_cpus(cid, self.settings.container_cpus)
        except DockerRuntimeError as exc:
            log.warning("startup CPU boost of %s not dropped yet: %s", cid, exc)
            return
        await self.redis.hdel(keys.host_boosts(host), cid)
        log.info("startup CPU boost dropped cid=%s host=%s", cid, host)

    async def boosted(self) -> dict[tuple[str, str], float]:
        """(host, cid) -> expiry of every boost under way: one round trip."""
        hosts = list(self.runtime.hosts)
        async with self.redis.pipeline(transaction=False) as pipe:
            for host in hosts:
                pipe.hgetall(keys.host_boosts(host))
            replies = await pipe.execute()
        return {
            (host, cid): parse(raw)[1]
            for host, reply in zip(hosts, replies, strict=True)
            for cid, raw in record(reply).items()
        }

    async def settle(self, done: set[str], now: float | None = None) -> int:
        """Drop the boosts of containers in ``done`` (their start is over) and those past
        their time; how many. The session tracker calls it every pass."""
        now = time.time() if now is None else now
        dropped = 0
        for (host, cid), expiry in (await self.boosted()).items():
            if cid in done or expiry <= now:
                if cid not in done:
                    log.warning("startup CPU boost of %s ran out: dropping it", cid)
                await self.drop(host, cid)
                dropped += 1
        return dropped
