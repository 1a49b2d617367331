"""A cap on container creations per Docker host, shared by every gateway and controller,
where a user's start goes ahead of pool refills.

Creations under way are leases in a Redis sorted set per host (a creator that dies frees
its lease when it runs out). A start takes any free place and, while it waits, leaves a
mark that makes every refill wait; refills never take the last place. So a refill storm
cannot starve a user's start: it waits at most for one creation to finish.

Starts under way with a startup CPU boost (boost.py) hold places too, as placement counts
them: each container's worth of extra CPU (``PREVIEW_CONTAINER_CPUS``) is one place. When
many start at once, the creations after them wait for CPU the boosted starts are using
instead of slowing them all down, and refills wait first. A start still creates when no
other creation is under way, however much is boosted: boosts end within minutes, a user
must not wait for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from shared import keys

# KEYS: creating, starts waiting, boosts. ARGV: token, now, lease expiry, cap, kind, wait
# expiry, CPUs per container. -> 1 when the token now holds a place, 0 when it must wait.
_ENTER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local creating = redis.call('ZCARD', KEYS[1])
local boosted = 0
local boosts = redis.call('HVALS', KEYS[3])
for i = 1, #boosts do
  local extra, expiry = string.match(boosts[i], '^([^|]+)|?(.*)$')
  if expiry == '' or tonumber(expiry) > tonumber(ARGV[2]) then
    boosted = boosted + tonumber(extra)
  end
end
local busy = creating + boosted / tonumber(ARGV[7])
local cap = tonumber(ARGV[4])
if ARGV[5] == 'start' then
  if creating == 0 or busy < cap then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 1
  end
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
  return 0
end
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
if busy < math.max(cap - 1, 1) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""
START_POLL = 0.05  # seconds between a waiting start's attempts (a user is waiting)
REFILL_POLL = 0.25
LEAVE_RETRY = (0.5, 1.0, 2.0, 4.0)  # then every 5 s, until the lease would have run out


class CreateGate:
    """`async with gate.place(host, start=True):` around one container creation."""

    def __init__(
        self,
        redis: Redis,
        cap: int,
        background: Background | None = None,
        container_cpus: float = 1.0,
    ) -> None:
        self.redis = redis
        self.cap = max(1, cap)
        # One place per this many boosted CPUs (placement's unit: one container's limit).
        self.container_cpus = max(container_cpus, 0.01)
        self._enter = redis.register_script(_ENTER)
        # The process's, so that a place still being given back is awaited at shutdown.
        self.background = background or Background()

    async def try_enter(self, host: str, token: str, start: bool) -> bool:
        now = time.time()
        reply = await self._enter(
            keys=[keys.host_creating(host), keys.host_starts_waiting(host), keys.host_boosts(host)],
            args=[
                token,
                repr(now),
                repr(now + keys.CREATE_LEASE),
                self.cap,
                "start" if start else "refill",
                repr(now + keys.CREATE_WAIT_TTL),
                repr(self.container_cpus),
            ],
        )
        return bool(reply)

    async def leave(self, host: str, token: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.host_creating(host), token)
            pipe.zrem(keys.host_starts_waiting(host), token)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def place(self, host: str, start: bool) -> AsyncIterator[float]:
        """Hold one creation place on `host` for the block; yields the seconds waited."""
        token = secrets.token_hex(8)
        began = time.monotonic()
        try:
            while not await self.try_enter(host, token, start):
                await asyncio.sleep(START_POLL if start else REFILL_POLL)
            yield time.monotonic() - began
        finally:
            # Also on cancellation while waiting: a start's waiting mark must not linger.
            try:
                await asyncio.shield(self.leave(host, token))
            except (RedisError, OSError):
                # Redis away (a restart, a failover): a place left held would stall every
                # creation on this host, starts included, until its lease runs out (72 s
                # measured after a failover); give it back once Redis answers again.
                self.background.spawn(self._leave_later(host, token), f"give back {host}")
                raise

    async def _leave_later(self, host: str, token: str) -> None:
        deadline = time.monotonic() + keys.CREATE_LEASE
        for attempt in itertools.count():
            await asyncio.sleep(LEAVE_RETRY[attempt] if attempt < len(LEAVE_RETRY) else 5.0)
            with contextlib.suppress(RedisError, OSError):
                await self.leave(host, token)
                return
            if time.monotonic() > deadline:
                return  # its lease has run out anyway
