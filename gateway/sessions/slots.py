"""Concurrent previews per user: leased slots in one Redis sorted set per user.

A slot is a member (session id) scored with its lease expiry. Reserving is one Lua script
(drop expired leases, hot-start check, count, add, write the new session's record), so the
limit holds across gateway replicas and concurrent requests. Live sessions get their
leases renewed (:func:`renew`); a gateway that dies mid-start simply stops renewing, and
the slot frees itself when the lease runs out. Stopping frees it at once and wakes
requests waiting for a slot (``?wait=N``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.redis_types import text

# KEYS: slots, user_project, session, SESSIONS.
# ARGV: sid, now, lease expiry, limit, user_project ttl, then the record's field/value pairs.
# -> {"hot", sid} | {"full", earliest expiry, sid...} | {"ok"}
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local current = redis.call('GET', KEYS[2])
if current and redis.call('ZSCORE', KEYS[1], current) then
  return {'hot', current}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  local active = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local result = {'full', active[2]}
  for i = 1, #active, 2 do table.insert(result, active[i]) end
  return result
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[3])))
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[5])
local record = {}
for i = 6, #ARGV do table.insert(record, ARGV[i]) end
redis.call('HSET', KEYS[3], unpack(record))
redis.call('SADD', KEYS[4], ARGV[1])
return {'ok'}
"""

# KEYS: slots. ARGV: sid, new expiry, now. Renews only a lease still held.
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) < math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[3])) then
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
end
return 1
"""

# KEYS: slots, user_project, freed channel. ARGV: sid.
_RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if removed == 1 then redis.call('PUBLISH', KEYS[3], ARGV[1]) end
return removed
"""


@dataclass(frozen=True)
class Reservation:
    """What reserving found: "ok" (slot taken), "hot" (`sid` is the live session of this
    project) or "full" (`active` hold every slot; one may free itself in `retry_after` s)."""

    outcome: str
    sid: str = ""
    active: tuple[str, ...] = ()
    retry_after: int = 0


class Slots:
    """The per-user concurrency limit."""

    def __init__(self, redis: Redis, limit: int, lease: float) -> None:
        self.redis = redis
        self.limit = limit
        self.lease = lease
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(
        self, user: str, project_id: str, sid: str, record: dict[str, str]
    ) -> Reservation:
        """Take a slot for new session `sid` and write its record, unless the project is
        already live (hot start) or the user has no slot left."""
        now = time.time()
        fields: list[str] = []
        for name, value in record.items():
            fields += [name, value]
        args: list[Any] = [sid, repr(now), repr(now + self.lease), self.limit]
        reply = await self._reserve(
            keys=[
                keys.user_slots(user),
                keys.user_project(user, project_id),
                keys.session(sid),
                keys.SESSIONS,
            ],
            args=[*args, keys.USER_PROJECT_TTL, *fields],
        )
        outcome = text(reply[0])
        if outcome == "hot":
            return Reservation("hot", sid=text(reply[1]))
        if outcome == "full":
            earliest = float(text(reply[1]))
            retry = max(1, math.ceil(earliest - now))
            return Reservation("full", active=tuple(text(r) for r in reply[2:]), retry_after=retry)
        return Reservation("ok", sid=sid)

    async def active(self, user: str) -> list[str]:
        """The user's session ids whose lease has not run out, oldest first."""
        members: list[Any] = await self.redis.zrangebyscore(
            keys.user_slots(user), time.time(), "+inf"
        )
        return [text(m) for m in members]

    async def holds(self, user: str, sid: str) -> bool:
        score = await self.redis.zscore(keys.user_slots(user), sid)
        return score is not None and float(score) > time.time()


async def renew(redis: Redis, user: str, sid: str, lease: float) -> bool:
    """Extend the lease of a slot still held (True), e.g. while its container heartbeats
    for the session. Never re-creates a lease that already ran out or was released."""
    now = time.time()
    script = redis.register_script(_RENEW)
    reply = await script(keys=[keys.user_slots(user)], args=[sid, repr(now + lease), repr(now)])
    return bool(reply)


async def release(redis: Redis, user: str, sid: str, project_id: str) -> bool:
    """Free the slot now (True if it was held), drop the hot-start pointer if it is this
    session's, and wake `?wait=` requests of this user."""
    script = redis.register_script(_RELEASE)
    reply = await script(
        keys=[
            keys.user_slots(user),
            keys.user_project(user, project_id),
            keys.user_slot_freed(user),
        ],
        args=[sid],
    )
    return bool(reply)


async def wait_for_slot(
    redis: Redis, user: str, attempt: Any, deadline: float, poll: float = 1.0
) -> Reservation:
    """Call `attempt()` (a reserve) until it is not "full" or `deadline` (loop time) passes.
    Woken by the user's freed-slot channel, and at least every `poll` s, since a lease
    that runs out frees its slot without a message."""
    loop = asyncio.get_running_loop()
    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(keys.user_slot_freed(user))
        while True:
            result: Reservation = await attempt()
            remaining = deadline - loop.time()
            if result.outcome != "full" or remaining <= 0:
                return result
            await pubsub.get_message(timeout=min(poll, remaining))
