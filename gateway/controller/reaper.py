"""The reaper, run by the leading controller every pass: live sessions end on time.

- its Docker host is down → failed (container forgotten; removed when the host is back);
- its container's record is gone → failed;
- its container's heartbeat missing past the TTL → failed ("container stopped
  responding"), slot freed, container destroyed: within TTL + one pass of the last
  heartbeat, so well within 2 x TTL; not while Redis is only just back
  (gateway/controller/outage.py);
- older than PREVIEW_SESSION_MAX_LIFETIME → stopped (released to the pool);
- no proxied traffic for PREVIEW_IDLE_TIMEOUT → stopped, after reading the activity
  again under the session's lock (fresh traffic must win over a reaper);
- ready, and no proxied request nor API write for PREVIEW_SLEEP_AFTER → put to sleep,
  decided again under the lock in the same way (a sleeping preview keeps heartbeating, so
  none of the rules above takes it for dead);
- asleep for PREVIEW_HIBERNATE_AFTER → hibernated (which, when on, replaces the idle stop
  for sleeping previews);
- resource rules (gateway/controller/resources.py);
- a start that never got a container (its gateway died) → dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from gateway.containers.containers import Containers
from gateway.controller.outage import OutageWatch
from gateway.controller.resources import MEMORY_LIMIT, ResourceRules
from gateway.errors import ApiError
from gateway.observability.counters import decision
from gateway.sessions import teardown
from gateway.sessions.endings import Endings, session_lock
from gateway.sessions.hibernation import Hibernator
from gateway.sessions.previews import Previews
from gateway.sessions.sleeping import Sleeper
from gateway.sessions.start import Starter
from gateway.sessions.store import Session, live_sessions
from shared import keys
from shared.messages import Heartbeat
from shared.redis_types import record, text
from shared.settings import Settings

log = logging.getLogger(__name__)

STOPPED_RESPONDING = "container stopped responding"


def _float(raw: str | bytes | None) -> float:
    try:
        return float(text(raw) or 0)
    except ValueError:
        return 0.0


class Reaper:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        containers: Containers,
        previews: Previews,
        endings: Endings,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.containers = containers
        self.previews = previews
        self.endings = endings
        self.resources = ResourceRules(settings, redis, containers, endings)
        self.outage = OutageWatch(redis, settings.heartbeat_ttl)
        self.sleeper = Sleeper(previews)
        self.hibernator = Hibernator(previews, Starter(previews), self.sleeper)

    async def tick(self) -> int:
        """One pass over every live session; returns how many were ended."""
        await self.outage.check()
        ended = await self._pass()
        self.outage.passed()
        return ended

    async def _pass(self) -> int:
        sessions = await live_sessions(self.redis)
        if not sessions:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                cid = session.container or "-"
                pipe.hgetall(keys.container(cid))
                pipe.get(keys.heartbeat(cid))
                pipe.get(keys.activity(session.id))
                pipe.get(keys.requested(session.id))
            replies = await pipe.execute()
        down = {s.name for s in await self.containers.placement.states() if not s.up}
        ended = 0
        for i, session in enumerate(sessions):
            found, beat, active, used = (record(replies[4 * i]), *replies[4 * i + 1 : 4 * i + 4])
            if session.state == "stopping" or not session.id:
                continue
            if await self.check(session, found, Heartbeat.read(beat), _float(active), down):
                ended += 1
            elif self._sleepy(session, _float(used), time.time()):
                await self._sleep_if_idle(session)
            elif self._hibernatable(session, time.time()):
                await self._hibernate_if_asleep(session)
        return ended

    async def check(
        self,
        session: Session,
        found: dict[str, str],
        heartbeat: Heartbeat | None,
        active: float,
        down: set[str],
    ) -> bool:
        """Apply the rules to one session; True when it was ended."""
        now = time.time()
        s = self.settings
        if session.host and session.host in down:
            reason = "the Docker host running this preview is unreachable"  # no name: an address
            return await self.endings.fail(session, "host_down", reason, container="forget")
        if not session.container:
            if now - session.created_at > s.pool_warm_timeout:
                await self._drop_abandoned(session)
                return True
            return False
        if not found:
            return await self.endings.fail(
                session, "container_gone", "the preview's container is gone", container="keep"
            )
        if heartbeat is None:
            if not self.outage.heartbeats_trusted:
                return False  # Redis was away: supervisors are only now writing again
            silence = await self._silent_for(session.container, found, now)
            if silence is None:
                return False
            silent, last = silence
            limit = s.heartbeat_limit(last.state if last is not None else "")
            detail = f"no heartbeat for {silent:.0f}s (limit {limit:.0f}s)"
            if last is not None and last.memory_used > MEMORY_LIMIT * last.memory_limit > 0:
                # A container thrashing at its memory limit starves its supervisor too.
                detail += (
                    f"; its last heartbeat showed {last.memory_used >> 20} of "
                    f"{last.memory_limit >> 20} MiB memory in use: it likely ran out of memory"
                )
            return await self.endings.fail(session, "heartbeat_lost", STOPPED_RESPONDING, detail)
        if now - session.created_at > s.session_max_lifetime:
            hours = s.session_max_lifetime / 3600
            reason = f"reached the maximum session lifetime of {hours:g} h"
            return await self.endings.stop(session, "max_lifetime", reason)
        hibernates = s.hibernate_after > 0 and session.state == "sleeping"
        if not hibernates and now - max(active, session.updated_at, session.created_at) > (
            s.idle_timeout
        ):
            return await self._stop_if_idle(session)
        if heartbeat.session_id == session.id:
            await self.resources.check(session, heartbeat, found, now)
        return False

    def _sleepy(self, session: Session, used: float, now: float) -> bool:
        after = self.settings.sleep_after
        last = max(used, session.updated_at, session.created_at)
        return after > 0 and session.state == "ready" and now - last > after

    async def _sleep_if_idle(self, session: Session) -> None:
        async def unused(current: Session) -> bool:
            used = _float(await self.redis.get(keys.requested(current.id)))
            return self._sleepy(current, used, time.time())

        await self._decide(session, unused, lambda c: self.sleeper.sleep(c, "idle"), "slept")

    def _hibernatable(self, session: Session, now: float) -> bool:
        after = self.settings.hibernate_after
        # updated_at: when it fell asleep (a wake or any change moves it on).
        return after > 0 and session.state == "sleeping" and now - session.updated_at > after

    async def _hibernate_if_asleep(self, session: Session) -> None:
        async def asleep(current: Session) -> bool:
            return self._hibernatable(current, time.time())

        await self._decide(
            session, asleep, lambda c: self.hibernator.hibernate(c, "idle"), "hibernated"
        )

    async def _decide(
        self,
        session: Session,
        still: Callable[[Session], Awaitable[bool]],
        act: Callable[[Session], Awaitable[None]],
        outcome: str,
    ) -> None:
        """Put an unused session to sleep or hibernate it, deciding again under its lock
        with fresh numbers (fresh traffic must win over a reaper)."""
        async with session_lock(self.redis, session.id, keys.REAPER_LOCK_TTL_MS) as held:
            if not held:
                return
            current = await self.previews.load(session.id)
            if current is None or not await still(current):
                return
            try:
                await act(current)
            except ApiError as exc:
                decision(log, f"{outcome}_skipped", exc.error, exc.detail, sid=session.id)
                return
            decision(log, f"session_{outcome}", "idle", "unused", sid=session.id)

    async def _silent_for(
        self, cid: str, found: dict[str, str], now: float
    ) -> tuple[float, Heartbeat | None] | None:
        """Seconds since the container's last heartbeat, and that heartbeat, when that is
        past its TTL (None while it may still be starting up or only just missed one). A
        sleeping supervisor beats rarely and says so: its beat lives the longer TTL (after
        a failover the key may be gone while the replicated history still holds it)."""
        last: Any = await self.redis.xrevrange(keys.heartbeat_history(cid), count=1)
        if last:
            beat = Heartbeat.read(last[0][1].get(keys.HEARTBEAT_HISTORY_FIELD.encode()))
            last_ts = beat.ts if beat is not None else 0.0
            limit = self.settings.heartbeat_limit(beat.state if beat is not None else "")
            if now - last_ts > limit:
                return now - last_ts, beat
            return None
        created = _float(found.get("created_at"))
        if now - created > self.settings.pool_warm_timeout:
            return now - created, None  # it never heartbeated at all
        return None

    async def _stop_if_idle(self, session: Session) -> bool:
        """Stop an idle session, deciding again under its lock with fresh numbers."""
        async with session_lock(self.redis, session.id, keys.REAPER_LOCK_TTL_MS) as held:
            if not held:
                return False  # someone is acting on it right now: look again next pass
            current = await self.previews.load(session.id)
            active = _float(await self.redis.get(keys.activity(session.id)))
            if current is None or current.state == "stopping":
                return False
            last = max(active, current.updated_at, current.created_at)
            idle = time.time() - last
            if idle <= self.settings.idle_timeout:
                decision(log, "reap_skipped", "fresh_activity", "used again", sid=session.id)
                return False
            reason = f"unused for {idle:.0f}s (idle timeout {self.settings.idle_timeout:g}s)"
            return await self.endings.stop(current, "idle", reason)

    async def _drop_abandoned(self, session: Session) -> None:
        """A start whose gateway died before it got a container: nothing runs for it."""
        await teardown.clear(self.redis, session)
        decision(log, "session_dropped", "abandoned_start", "never got a container", sid=session.id)
