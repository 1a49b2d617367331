"""A leader lease in Redis: several controllers run, one acts at a time.

The lease is renewed by its own task every third of its lifetime, independently of how
long a controller pass takes, and `leading` drops as soon as a renewal fails or is
refused, so a controller that lost the lease stops acting at its next step.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.periodic import ticks
from shared.redis_types import text

log = logging.getLogger(__name__)

# Renew only our own lease; take it if free. KEYS[1] = lease, ARGV = id, ttl ms.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderLease:
    def __init__(self, redis: Redis, ttl: float) -> None:
        # Host and pid say which controller leads (logs, operators, tests).
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.leading = False
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self) -> bool:
        """Take or renew the lease; True while we lead."""
        try:
            reply = await self._claim(keys=[keys.LEADER], args=[self.id, self.ttl_ms])
        except (RedisError, OSError):
            self._set(False)  # we cannot know, so we must not act
            raise
        self._set(bool(reply))
        return self.leading

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("controller %s leader=%s", self.id, leading)

    async def keep(self) -> None:
        """Claim and renew every third of the lease's lifetime, until cancelled."""
        failing = False
        async for _ in ticks(self.ttl / 3, first_now=True):
            try:
                await self.claim()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.error("leader lease not renewed: %s", exc)
                failing = True

    async def holder(self) -> str | None:
        value = await self._redis.get(keys.LEADER)
        return text(value) if value is not None else None

    async def release(self) -> None:
        self.leading = False
        await self._release(keys=[keys.LEADER], args=[self.id])
