"""A request held on a starting (or resuming) preview is answered at its ``ready`` event,
not a tracker pass and a polling backoff later: the proxy's waiter follows the preview's
events through the control plane's hook (gateway/sessions/following.py). No tracker runs
in these tests, so without the hook nothing would ever fold the ``ready``."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

from redis.asyncio import Redis

from gateway.background import Background
from gateway.proxy.routes import RouteCache
from gateway.proxy.starting import ReadyWaits
from gateway.sessions.following import Follower
from gateway.sessions.previews import Previews
from gateway.sessions.store import Session
from shared import keys
from shared.messages import Event
from shared.settings import Settings

HOLD = 20.0


async def starting(redis: Redis, sid: str, state: str = "resuming") -> Session:
    session = Session(sid, "alice", "p", state=state, container="pvc-follow", events_from="0-0")
    await redis.hset(keys.session(sid), mapping=session.to_record())  # type: ignore[arg-type]
    return session


def event(kind: str, sid: str, **data: Any) -> Any:
    return Event(kind, sid, data).to_fields()


async def test_a_held_request_is_answered_at_the_ready_event(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    state = SimpleNamespace(follower=Follower(previews, redis))
    waits = ReadyWaits(RouteCache(redis), background, HOLD, state)
    await starting(redis, "s1")
    # Another preview's events on the same stream do not end the wait.
    await redis.xadd(keys.events("pvc-follow"), event("progress", "s1", step="devserver"))
    held = [asyncio.create_task(waits.wait("s1")) for _ in range(3)]  # one waiter for all
    try:
        done, _ = await asyncio.wait(held, timeout=0.5)
        assert not done, "answered before the dev server was ready"
        await redis.xadd(keys.events("pvc-follow"), event("ready", "other", port=3000))
        done, _ = await asyncio.wait(held, timeout=0.5)
        assert not done, "another session's ready ended the wait"
        began = time.monotonic()
        await redis.xadd(keys.events("pvc-follow"), event("ready", "s1", port=3000))
        routes = await asyncio.wait_for(asyncio.gather(*held), HOLD / 2)
        assert time.monotonic() - began < 2.0  # not a hold timeout
        assert {r.state for r in routes if r is not None} == {"ready"} and None not in routes
        assert await redis.hget(keys.session("s1"), "state") == b"ready"  # folded, published
    finally:
        for task in held:
            task.cancel()
        await background.close(1.0)


async def test_the_starting_pages_status_feed_reads_the_events_folded(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    routes = RouteCache(redis)
    waits = ReadyWaits(
        routes, background, HOLD, SimpleNamespace(follower=Follower(previews, redis))
    )
    try:
        await starting(redis, "s2", "starting")
        route = await routes.get("s2")
        assert route is not None and (await waits.current(route)).state == "starting"
        await redis.xadd(keys.events("pvc-follow"), event("ready", "s2", port=3000))
        assert (await waits.current(route)).state == "ready"
        # Without the hook (a gateway built without the control plane): as it was.
        bare = ReadyWaits(routes, background, HOLD)
        assert await bare.current(route) is route
    finally:
        await background.close(1.0)


async def test_a_failed_start_ends_the_wait_too(redis: Redis) -> None:
    settings = Settings.from_env({}, redis_url="redis://unused")
    background = Background()
    previews = Previews(settings, redis, cast(Any, None), background)
    follower = Follower(previews, redis)
    await starting(redis, "s3")
    waiting = asyncio.create_task(follower.until_started("s3", HOLD))
    try:
        await redis.xadd(keys.events("pvc-follow"), event("error", "s3", reason="boom"))
        await asyncio.wait_for(waiting, HOLD / 2)
        assert await redis.hget(keys.session("s3"), "state") == b"failed"
        # A preview that is gone, or already past its start: at once.
        await asyncio.wait_for(follower.until_started("nope", HOLD), 1.0)
        await asyncio.wait_for(follower.until_started("s3", HOLD), 1.0)
    finally:
        waiting.cancel()
        await background.close(1.0)
