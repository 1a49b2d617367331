"""After Redis was away: what must be put back, and what must not be judged yet.

- ACL users live only in the server's memory: a restarted Redis (even with its data
  back from the append-only file) has none, and every supervisor's login fails. Each
  container's record keeps the SHA-256 of its password (field ``acl``; never the
  password), so the leader recreates the missing users when Redis's ``run_id`` changes
  (a restart, or a Sentinel failover: ACL changes are not replicated, so a promoted
  replica has none either).
- Heartbeats lapse while Redis is away: supervisors cannot write them, and keys keep
  their absolute deadline across a restart. Until Redis has been reachable again for
  a grace (the heartbeat TTL twice: supervisors retry every interval, and may first need
  their user back), a missing heartbeat means nothing. Noticed three ways: Redis's own
  uptime (a restart, whoever leads), a new ``run_id`` (a failover), and a gap between
  the end of this reaper's last complete pass and the next (an outage or partition
  this process sat through; a pass that was merely slow, removing containers, is not
  one).
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from shared import keys
from shared.acl import ACL_FIELD, container_acl_rules
from shared.redis_types import raw_command, text

log = logging.getLogger(__name__)


async def restore_acl_users(redis: Redis) -> int:
    """Recreate the ACL user of every registered container that has none; how many."""
    users = {text(u) for u in await raw_command(redis, "ACL", "USERS")}
    cids = sorted(text(c) for c in await redis.smembers(keys.CONTAINERS))
    missing = [cid for cid in cids if cid not in users]
    if not missing:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for cid in missing:
            pipe.hget(keys.container(cid), ACL_FIELD)
        digests = [text(d) for d in await pipe.execute()]
    restored = 0
    for cid, digest in zip(missing, digests, strict=True):
        if digest:
            rules = container_acl_rules(cid)
            await raw_command(redis, "ACL", "SETUSER", cid, "reset", *rules, f"#{digest}")
            restored += 1
    log.warning(
        "redis lost %d container users (restarted or failed over?); recreated %d",
        len(missing),
        restored,
    )
    return restored


class OutageWatch:
    """Asked by the reaper at the start of each pass (with Redis reachable)."""

    def __init__(self, redis: Redis, heartbeat_ttl: float) -> None:
        self.redis = redis
        self.grace = 2 * heartbeat_ttl
        self.heartbeat_ttl = heartbeat_ttl
        self._run_id: str | None = None
        self._passed: float | None = None  # monotonic end of the last complete pass
        self._quiet_until = 0.0

    async def check(self) -> None:
        info = await self.redis.info("server")
        now = time.monotonic()
        run_id, uptime = str(info.get("run_id", "")), float(info.get("uptime_in_seconds", 0))
        if uptime < self.grace:
            self._quiet_until = max(self._quiet_until, now + self.grace - uptime)
        if self._passed is not None and now - self._passed > self.heartbeat_ttl:
            self._quiet_until = max(self._quiet_until, now + self.grace)
        if run_id != self._run_id:
            if self._run_id is not None:
                # Another server answers (a failover: a promoted replica has a long
                # uptime): supervisors must find it and get their users back first.
                self._quiet_until = max(self._quiet_until, now + self.grace)
            self._run_id = run_id
            await restore_acl_users(self.redis)
        elif not self.heartbeats_trusted:
            # A container launched across the switch may have made its user on the old
            # server and its record on the new one: look again until the grace ends.
            await restore_acl_users(self.redis)

    def passed(self) -> None:
        """A pass completed: Redis answered throughout."""
        self._passed = time.monotonic()

    @property
    def heartbeats_trusted(self) -> bool:
        """False during the grace after an outage: a missing heartbeat is not news."""
        return time.monotonic() >= self._quiet_until
