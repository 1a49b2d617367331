"""Containers reserved for one user: a container never serves two users.

A container that ran a user's code may hold whatever that code left behind (in its home,
/tmp, caches...), so once released it goes back only to a pool reserved for that same
user (``keys.user_reserved``), for PREVIEW_POOL_AFFINITY_TTL, and is destroyed after.
The general pool (``keys.pool``) holds only containers that never ran user code.

Every reserved container is also in ``keys.RESERVED`` (cid -> reserved-until), the
controller's index for expiry, health checks and eviction. An entry leaves both sets in
one script, whoever takes it (an acquisition, an expiry, an eviction), and only the one
that took it may use or destroy the container: no container is handed out and destroyed
at once, nor handed out twice.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.redis_types import text
from shared.settings import Settings

# KEYS: container record, the user's reserved set, RESERVED. ARGV: cid, user, owner
# (affinity key), now, reserved-until. Only a container being released, whose record
# says this user had it; -> 1 when reserved.
_RESERVE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'releasing' then return 0 end
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'reserved', 'project', ARGV[3], 'session', '',
  'pooled_at', ARGV[4], 'reserved_until', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"""

# KEYS: RESERVED, the user's reserved set. ARGV: cid. -> 1 for the one caller that took it.
_TAKE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class ReservedPool:
    """The reserved containers of every user (see the module's docstring)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._take = redis.register_script(_TAKE)

    async def reserve(self, cid: str, user: str, owner: str) -> bool:
        """Keep a released (and reset) container for `user` until the TTL; False when
        its record no longer says it is being released for that user."""
        now = time.time()
        until = now + self.settings.pool_affinity_ttl
        reserved = await self._reserve(
            keys=[keys.container(cid), keys.user_reserved(user), keys.RESERVED],
            args=[cid, user, owner, repr(now), repr(until)],
        )
        return bool(reserved)

    async def take(self, cid: str) -> bool:
        """Take a reserved container out of reach of acquisitions; True for the one caller
        that did (it then destroys it)."""
        user = text(await self.redis.hget(keys.container(cid), "user"))
        taken = await self._take(keys=[keys.RESERVED, keys.user_reserved(user)], args=[cid])
        return bool(taken)

    async def expired(self, now: float | None = None) -> list[str]:
        """Reserved containers whose time is up."""
        until = time.time() if now is None else now
        found: Any = await self.redis.zrangebyscore(keys.RESERVED, "-inf", until)
        return [text(c) for c in found]

    async def oldest(self, count: int) -> list[str]:
        """The `count` reserved containers that expire soonest (released longest ago)."""
        if count <= 0:
            return []
        found: Any = await self.redis.zrange(keys.RESERVED, 0, count - 1)
        return [text(c) for c in found]

    async def all(self) -> list[str]:
        found: Any = await self.redis.zrange(keys.RESERVED, 0, -1)
        return [text(c) for c in found]
