"""Where each preview's traffic goes: session id → owner, state, dev-server address.

Cached in-process for a short TTL so the proxy's hot path does not touch Redis; anyone who
changes a session publishes its id on ``keys.ROUTE_CHANGES`` and every gateway drops its
cached entry at once. While Redis is unreachable, cached routes keep serving (stale is
better than down for previews that are already open).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from shared import keys
from shared.redis_types import text
from shared.states import SessionState, session_state_of_record

log = logging.getLogger(__name__)

ROUTE_TTL = 5.0  # seconds a found route is trusted without hearing of a change
MISS_TTL = 1.0  # seconds an unknown id is remembered (a flood of bogus hosts stays cheap)
_FIELDS = ("user", "state", "address", "error", "container")


@dataclass(frozen=True)
class Route:
    sid: str
    user: str
    state: SessionState
    address: str
    error: str = ""
    container: str = ""

    @property
    def live(self) -> bool:
        return self.state not in ("failed", "stopping")


class RouteCache:
    def __init__(self, redis: Redis, on_change: Callable[[str], None] | None = None) -> None:
        self.redis = redis
        self._entries: dict[str, tuple[float, Route | None]] = {}
        self._listener: asyncio.Task[None] | None = None
        # Told every published change too (a session id, or a revoked share), and "" when
        # changes may have been missed (the subscription was lost).
        self.on_change = on_change

    async def get(self, sid: str) -> Route | None:
        now = time.monotonic()
        cached = self._entries.get(sid)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            values = await self.redis.hmget(keys.session(sid), list(_FIELDS))
        except (RedisError, OSError):
            if cached is not None:  # stale beats down
                return cached[1]
            raise
        if values[0] is None:
            self._entries[sid] = (now + MISS_TTL, None)
            return None
        user, state, address, error, container = (text(v) for v in values)
        route = Route(sid, user, session_state_of_record(state), address, error, container)
        self._entries[sid] = (now + ROUTE_TTL, route)
        if len(self._entries) > 50_000:
            self._expire(now)
        return route

    def invalidate(self, sid: str) -> None:
        self._entries.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [s for s, (until, _) in self._entries.items() if until <= now]:
            del self._entries[sid]

    def start(self, background: Background) -> None:
        """Listen for route changes until `background` closes."""
        if self._listener is None:
            self._listener = background.forever(self._listen(), "route invalidations")

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.ROUTE_CHANGES)
                    # Anything may have changed while we were not listening.
                    self._entries.clear()
                    if self.on_change is not None:
                        self.on_change("")
                    async for message in pubsub.listen():
                        changed = text(message["data"])
                        self.invalidate(changed)
                        if self.on_change is not None:
                            self.on_change(changed)
            except (RedisError, OSError) as exc:
                log.warning("route invalidations lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
