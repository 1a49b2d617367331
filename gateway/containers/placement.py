"""Which Docker host a new container goes to: the one with the most free capacity.

Capacity comes from the engine (memory and CPUs, recorded in Redis by the controller's
host checks, else asked once here) and the container limits in the settings; use is our
own accounting (``keys.host_containers``), which a new container joins atomically with
the capacity check, so concurrent launches from several gateways cannot overfill a host.
Hosts the controller marked down, and hosts an operator drained, are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.containers.docker_runtime import DockerRuntime, DockerRuntimeError
from shared import keys
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

ENGINE_INFO_TTL = 60.0  # seconds an engine's size asked here is trusted
ENGINE_INFO_TIMEOUT = 3.0
ENGINE_FAILURE_TTL = 5.0

# KEYS: host's containers, CONTAINERS, the container record. ARGV: cid, capacity, then
# the record's field/value pairs. Registers the container unless the host is full.
_RESERVE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
local fields = {}
for i = 3, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[3], unpack(fields))
return 1
"""


async def read_hosts(
    redis: Redis, names: list[str]
) -> tuple[list[tuple[dict[str, str], int]], set[str]]:
    """What the controller last recorded about each host (its hash and how many of our
    containers it holds), and the set of drained hosts: one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.docker_host(name))
            pipe.scard(keys.host_containers(name))
        pipe.smembers(keys.DRAINED_HOSTS)
        replies = await pipe.execute()
    seen = [(record(replies[2 * i]), int(replies[2 * i + 1])) for i in range(len(names))]
    return seen, {text(n) for n in replies[-1]}


@dataclass(frozen=True)
class HostState:
    name: str
    up: bool
    reason: str
    capacity: int
    used: int
    drained: bool = False  # an operator asked for no new containers there
    boosted: float = 0.0  # containers' worth of startup CPU boosts under way (boost.py)

    @property
    def usable(self) -> bool:
        """Up, not drained, with room for one more container."""
        return self.up and not self.drained and self.free > 0

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def rank(self) -> float:
        """Free room net of startup boosts: where a new container starts fastest. Boosts
        order hosts but never refuse a container (they end within minutes)."""
        return self.free - self.boosted


def host_capacity(settings: Settings, mem_total: int, ncpu: int) -> int:
    """Containers a host holds: bounded by its memory, its CPUs (overcommitted), and
    the optional per-host maximum."""
    per_container = max(1, settings.container_memory_mb) * 1024 * 1024
    by_memory = mem_total // per_container
    by_cpu = int(ncpu * settings.host_cpu_overcommit / max(settings.container_cpus, 0.01))
    capacity = min(by_memory, by_cpu)
    if settings.host_max_containers > 0:
        capacity = min(capacity, settings.host_max_containers)
    return max(0, capacity)


class Placement:
    def __init__(self, settings: Settings, redis: Redis, runtime: DockerRuntime) -> None:
        self.settings = settings
        self.redis = redis
        self.runtime = runtime
        self._reserve = redis.register_script(_RESERVE)
        # name -> (asked at, (memory, CPUs) or None when the engine did not answer)
        self._engine: dict[str, tuple[float, tuple[int, int] | None]] = {}

    async def _engine_size(self, name: str) -> tuple[int, int] | None:
        """(memory bytes, CPUs) asked of the engine, when no host check recorded them.
        A failure is remembered briefly too: a dead host must not cost a timeout per
        placement."""
        cached = self._engine.get(name)
        if cached is not None:
            asked, size = cached
            if time.monotonic() - asked < (ENGINE_INFO_TTL if size else ENGINE_FAILURE_TTL):
                return size
        try:
            async with asyncio.timeout(ENGINE_INFO_TIMEOUT):  # not wait_for (see hosts.py)
                info = await self.runtime.get(name).info()
        except (TimeoutError, DockerRuntimeError) as exc:
            if cached is None or cached[1] is not None:
                log.warning("no size for Docker host %s: %s", name, exc)
            self._engine[name] = (time.monotonic(), None)
            return None
        found = int(info.get("MemTotal") or 0), int(info.get("NCPU") or 0)
        self._engine[name] = (time.monotonic(), found)
        return found

    async def states(self) -> list[HostState]:
        """Every configured host: up or not (as the controller last saw it), capacity, use."""
        names = list(self.runtime.hosts)
        seen, drained = await read_hosts(self.redis, names)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hvals(keys.host_boosts(name))
            boosts = await pipe.execute()
        per_container = max(self.settings.container_cpus, 0.01)
        states = []
        for name, (found, used), boost in zip(names, seen, boosts, strict=True):
            up = found.get("state", "up") != "down"
            reason = found.get("reason", "")
            mem, cpus = int(found.get("mem_total") or 0), int(found.get("ncpu") or 0)
            if up and not mem:
                size = await self._engine_size(name)
                if size is None:
                    up, reason = False, "engine did not answer"
                else:
                    mem, cpus = size
            capacity = host_capacity(self.settings, mem, cpus)
            boosted = sum(float(text(v).partition("|")[0]) for v in boost) / per_container
            states.append(HostState(name, up, reason, capacity, used, name in drained, boosted))
        return states

    async def candidates(self, exclude: Collection[str] = ()) -> list[HostState]:
        """Usable hosts (up, not drained, with room), most free first (ties: configured
        order)."""
        usable = [s for s in await self.states() if s.usable and s.name not in exclude]
        return sorted(usable, key=lambda s: -s.rank)

    async def host_cpus(self, name: str) -> int:
        """The host's cores, as the controller recorded them or the engine says."""
        recorded = int(text(await self.redis.hget(keys.docker_host(name), "ncpu")) or 0)
        if recorded:
            return recorded
        size = await self._engine_size(name)
        return size[1] if size else 0

    async def register(self, host: HostState, cid: str, fields: dict[str, str]) -> bool:
        """Count `cid` on `host` and write its record, unless the host filled up meanwhile."""
        pairs = [item for pair in fields.items() for item in pair]
        reply = await self._reserve(
            keys=[keys.host_containers(host.name), keys.CONTAINERS, keys.container(cid)],
            args=[cid, host.capacity, *pairs],
        )
        return bool(reply)
