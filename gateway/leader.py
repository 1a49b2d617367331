"""A leader lease in Redis: several controllers run, one acts at a time."""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from shared import keys

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
        self.id = secrets.token_hex(8)
        self.ttl_ms = int(ttl * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self) -> bool:
        """Take or renew the lease; True while we lead."""
        return bool(await self._claim(keys=[keys.LEADER], args=[self.id, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[keys.LEADER], args=[self.id])
