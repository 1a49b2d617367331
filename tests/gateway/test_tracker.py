"""The session tracker (gateway/sessions/tracker.py) on a real Redis: a starting session's
`ready` reaches its record (and so the proxy) within the fast poll, not a full pass."""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis

from gateway.sessions.tracker import Tracker
from shared import keys
from shared.messages import Event
from shared.settings import Settings
from tests.gateway.controller_fixtures import (
    ControllerFactory,
    fake_session,
    make_controller_fixture,  # noqa: F401 (fixture make_controller)
    starter_for,
)
from tests.utils import async_wait_until


async def test_ready_folded_between_full_passes(
    settings: Settings, redis: Redis, make_controller: ControllerFactory
) -> None:
    previews = starter_for(make_controller(settings)).previews
    starting = await fake_session(redis, "pvc-starting", state="starting")
    ready_one = await fake_session(redis, "pvc-ready", user="bob")
    # Full passes a minute apart: only the fast poll of starting sessions can fold it.
    tracker = Tracker(previews, interval=60.0, starting_poll=0.1)
    task = asyncio.create_task(tracker.run())
    try:

        async def seen() -> bool:
            return tracker.starting == {starting.id}  # the ready one is not polled

        await async_wait_until(seen, 10, "the first full pass")
        event = Event("ready", starting.id, {"port": 3000})
        await redis.xadd(keys.events("pvc-starting"), event.to_fields())  # type: ignore[arg-type]
        sent = time.monotonic()

        async def ready() -> bool:
            return await redis.hget(keys.session(starting.id), "state") == b"ready"

        await async_wait_until(ready, 10, "the session ready")
        assert time.monotonic() - sent < 1.0
        assert tracker.starting == set()  # no longer polled
        assert ready_one.id not in tracker.starting
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
