"""Marks that a preview is in use, for the reaper: `keys.activity` (any traffic, idle
reaping) and `keys.requested` (requests only, PREVIEW_SLEEP_AFTER). Written off the request
path, each at most once per ACTIVITY_EVERY per preview and gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.background import Background
from shared import keys

log = logging.getLogger(__name__)

ACTIVITY_EVERY = 5.0  # seconds between activity writes per preview
MARK_TTL = 86400  # seconds a mark outlives its preview at most


class Activity:
    def __init__(self, redis: Callable[[], Redis], background: Background) -> None:
        self._redis = redis  # the app's client, opened by its lifespan after we are built
        self._background = background
        self._activity: dict[str, float] = {}
        self._requested: dict[str, float] = {}

    def touch(self, sid: str, request: bool = False) -> None:
        """Mark the preview used (for idle reaping) and, for a request (not a WebSocket
        message), awake-worthy (PREVIEW_SLEEP_AFTER)."""
        now = time.monotonic()
        names = []
        if now - self._activity.get(sid, 0.0) >= ACTIVITY_EVERY:
            self._activity[sid] = now
            names.append(keys.activity(sid))
        if request and now - self._requested.get(sid, 0.0) >= ACTIVITY_EVERY:
            self._requested[sid] = now
            names.append(keys.requested(sid))
        if not names:
            return
        self._background.spawn(self._write(sid, names), f"activity {sid}")

    async def _write(self, sid: str, names: list[str]) -> None:
        stamp = repr(time.time())
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.set(name, stamp, ex=MARK_TTL)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("activity not recorded sid=%s: %s", sid, exc)
