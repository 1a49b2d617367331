"""Session events on the container's stream: progress, warning, ready, error.

Progress data is ``{step, percent, message, elapsed_ms}`` with ``step`` one of
``files|dependencies|devserver``; within a step ``percent`` never goes down, and
intermediate reports are throttled so that a chatty install does not flood the stream.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.messages import Event

log = logging.getLogger(__name__)

Step = Literal["files", "dependencies", "devserver"]


class Events:
    """Writes events for this container; failures are logged, never raised (an event
    lost to a Redis blip must not fail the work it describes)."""

    def __init__(self, redis: Redis, cid: str) -> None:
        self.redis = redis
        self.key = keys.events(cid)

    async def emit(self, type: str, session_id: str | None, data: dict[str, Any]) -> None:
        event = Event(type=type, session_id=session_id or "", data=data)
        try:
            await self.redis.xadd(
                self.key,
                cast("dict[Any, Any]", event.to_fields()),
                maxlen=keys.EVENTS_MAXLEN,
                approximate=True,
            )
        except RedisError as exc:
            log.warning("event %s not written: %s", type, exc)


class Progress:
    """Progress of one preparation; ``elapsed_ms`` counts from its start."""

    def __init__(self, events: Events, session_id: str | None, min_interval: float = 0.5) -> None:
        self.events = events
        self.session_id = session_id
        self.min_interval = min_interval
        self.started = time.monotonic()
        self._percent: dict[str, int] = {}
        self._last_sent = 0.0

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    async def report(
        self, step: Step, percent: float, message: str, force: bool = False, **extra: Any
    ) -> None:
        """Send a progress event (``extra`` goes into its data); skipped when the last one
        was under ``min_interval`` ago, unless ``force`` (phase boundaries) or the step is
        complete."""
        value = max(self._percent.get(step, 0), min(100, int(percent)))
        now = time.monotonic()
        if not force and value < 100 and now - self._last_sent < self.min_interval:
            return
        if value == self._percent.get(step) == 100:
            return  # a step completes once
        self._percent[step] = value
        self._last_sent = now
        data = {
            **extra,
            "step": step,
            "percent": value,
            "message": message,
            "elapsed_ms": self.elapsed_ms(),
        }
        await self.events.emit("progress", self.session_id, data)

    async def warning(self, type: str, message: str, **extra: Any) -> None:
        await self.events.emit(
            "warning", self.session_id, {"type": type, "message": message, **extra}
        )
