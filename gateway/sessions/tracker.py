"""Keeps live sessions' records current without anyone reading them.

Every second one gateway (a short Redis lock picks it) folds new supervisor
events into each live session's record — so the proxy sees `ready` — and renews the slot
lease of every session whose container still heartbeats for it. A session whose
container stopped reporting is not renewed, so its slot frees itself after the lease; its
record and container are then left to the controller's reaper.

Between those passes, the gateway that made the last one folds the events of the
sessions it saw starting every STARTING_POLL: someone is waiting for their `ready` (the
starting page, held requests), which otherwise reached the proxy up to a second late.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from redis.exceptions import RedisError

from gateway.containers.containers import ContainerError
from gateway.sessions.previews import Previews
from gateway.sessions.store import live_sessions
from shared import keys
from shared.periodic import next_due, ticks
from shared.states import STARTING_STATES

log = logging.getLogger(__name__)

STARTING_POLL = 0.2  # seconds between folds of the starting sessions' events


class Tracker:
    def __init__(
        self, previews: Previews, interval: float = 1.0, starting_poll: float = STARTING_POLL
    ) -> None:
        self.previews = previews
        self.interval = interval
        self.starting_poll = min(starting_poll, interval)
        self.id = secrets.token_hex(6)
        self.starting: set[str] = set()  # ids starting at this gateway's last pass

    async def tick(self) -> int:
        """One pass (if this gateway got the lock); the number of sessions looked at."""
        redis = self.previews.redis
        if not await redis.set(keys.TRACKER_LOCK, self.id, nx=True, px=keys.TRACKER_LOCK_TTL_MS):
            self.starting = set()  # another gateway made this pass: it folds them
            return 0
        found = await live_sessions(redis)
        sessions = [s for s in found if s.container and s.state != "stopping"]
        async with redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                pipe.zscore(keys.user_slots(session.user), session.id)
            leases = await pipe.execute()
        now = time.time()
        started: set[str] = set()
        for session, lease in zip(sessions, leases, strict=True):
            # A lease that ran out is a dead session: the reaper's, not ours to revive.
            if lease is not None and float(lease) > now:
                await self.previews.refresh(session)
            # Past STARTING_STATES its start is over: no startup CPU boost any more.
            if session.state not in STARTING_STATES and session.container:
                started.add(session.container)
        await self.previews.containers.boost.settle(started, now)
        self.starting = {s.id for s in sessions if s.state in STARTING_STATES}
        return len(sessions)

    async def tick_starting(self) -> int:
        """Fold the events of the sessions still starting; how many are."""
        for sid in list(self.starting):
            session = await self.previews.load(sid)
            if session is not None and session.state in STARTING_STATES:
                await self.previews.refresh(session)
            if session is None or session.state not in STARTING_STATES:
                self.starting.discard(sid)
        return len(self.starting)

    async def run(self) -> None:
        """Drift-corrected loop until cancelled; a failed pass is logged, not fatal."""
        failing = False
        loop = asyncio.get_running_loop()
        full_due = loop.time()
        async for _ in ticks(self.starting_poll, first_now=True):
            try:
                if loop.time() >= full_due:
                    full_due = next_due(full_due, loop.time(), self.interval)
                    await self.tick()
                elif self.starting:
                    await self.tick_starting()
                else:
                    continue
                if failing:
                    log.info("session tracker recovered")
                failing = False
            except (RedisError, ContainerError, OSError) as exc:
                if not failing:
                    log.error("session tracker pass failed: %s", exc)
                failing = True
